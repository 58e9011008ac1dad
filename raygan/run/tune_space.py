"""Search-space files for `raygan tune`: YAML, checked in full before any trial starts.

    metric: frontier_distance   # what PBT ranks trials by; must be one the trials report
    mode: min
    trials: 4                   # population size (--trials overrides)
    perturbation_interval: 100  # training steps between exploit/explore decisions
    report_every: 50            # steps between evaluations + checkpoints (divides the interval)
    quantile_fraction: 0.25     # the bottom quarter copies the top quarter ...
    resample_probability: 0.25  # ... and redraws a key with this probability instead of nudging it
    synch: false                # true: decide when every trial has reached the interval
    keep_checkpoints: null      # per trial; null keeps all (a rotated-away donor fails its clone)
    fixed:                      # train-config keys every trial shares (num_workers: 1 unless set)
      estimator: gumbel
    search:                     # train-config keys drawn per trial, then mutated by PBT
      g_lr: {loguniform: [1.0e-5, 1.0e-3]}
      d_lr_ratio: {loguniform: [0.1, 10]}
      d_steps: {randint: [1, 5]}
      loss: {choice: [standard, rsgan]}

Distributions: `uniform` / `loguniform` [low, high] (PBT multiplies by 0.8 or 1.2, clamped to the
range), `randint` [low, high] both ends included (PBT moves one value up or down), `choice`
[values...] (PBT moves to a neighbouring value). Every key in `fixed` and `search` must be a
train-config field (`raygan config` lists them).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any

from raygan.core.config import Config, apply_overrides, flatten, resolve_key
from raygan.core.errors import RayganError

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
SPACE_KEYS = (
    "metric", "mode", "trials", "perturbation_interval", "report_every", "quantile_fraction",
    "resample_probability", "synch", "keep_checkpoints", "fixed", "search",
)  # fmt: skip
METRICS = {
    "oracle": {"frontier_distance": "min", "nll_oracle": "min", "nll_test": "min",
               "nll_train": "min"},
    "text": {"bleu_f4": "max", "bleu4": "max", "self_bleu4": "min", "nll_test": "min",
             "nll_train": "min"},
}  # fmt: skip
"""What the trials report per data kind, and which direction is better."""


@dataclasses.dataclass(frozen=True)
class Dist:
    key: str
    kind: str
    args: tuple

    def domain(self):
        """The initial draw, as a Tune search domain."""
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)  # Tune excludes the upper end
        return tune.choice(list(self.args))

    def mutation(self):
        """What PBT explores: a domain (scaled by 0.8/1.2 or redrawn) or a list (moved along)."""
        if self.kind == "randint":
            # A list, not a domain: PBT rounds int(1 * 1.2) back to 1, so d_steps=1 would never move.
            return list(range(self.args[0], self.args[1] + 1))
        if self.kind == "choice":
            return list(self.args)
        return self.domain()

    def clamp(self, value: Any) -> Any:
        if self.kind in ("uniform", "loguniform"):
            return min(max(value, self.args[0]), self.args[1])
        return value


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    metric: str
    mode: str
    trials: int
    perturbation_interval: int
    report_every: int
    quantile_fraction: float
    resample_probability: float
    synch: bool
    keep_checkpoints: int | None
    fixed: dict[str, Any]
    search: dict[str, Dist]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["search"] = {k: {d.kind: list(d.args)} for k, d in self.search.items()}
        return out

    def with_overrides(self, overrides: dict[str, Any], *, trials: int | None) -> SearchSpace:
        """Command-line key=value go into `fixed`; a searched key cannot also be fixed."""
        fixed = dict(self.fixed)
        for key, value in flatten(overrides).items():
            name = resolve_key(key)[1]
            if name in self.search:
                raise RayganError(
                    f"{name} is searched by {self.source}; remove it from the command line "
                    "or from the space's `search`"
                )
            fixed[name] = value
        space = dataclasses.replace(self, fixed=fixed, trials=trials or self.trials)
        _check_positive_int(space, "trials")
        return space

    def trial_overrides(self) -> dict[str, Any]:
        """The train-config keys every trial shares: `fixed`, one process per trial unless it says
        otherwise, and an evaluation + checkpoint every `report_every` steps (every report must
        carry the metric, and PBT decides at checkpoints)."""
        return {
            "num_workers": 1,
            **self.fixed,
            "eval_every": self.report_every,
            "checkpoint_every": self.report_every,
        }

    def trial_config(self, data_dir: str) -> Config:
        """The fixed keys resolved against the data, and every search bound checked against the
        config's own rules (e.g. gumbel_max_temperature >= 1), so no trial fails on its draw."""
        from raygan.run.train import resolve_config

        config = resolve_config(data_dir, self.trial_overrides())
        for dist in self.search.values():
            ends = dist.args if dist.kind == "choice" else (dist.args[0], dist.args[-1])
            for value in ends:
                try:
                    apply_overrides(config, {dist.key: value})
                except RayganError as exc:
                    raise RayganError(f"{self.source}: search.{dist.key}: {exc}") from None
        return config

    def param_space(self) -> dict[str, Any]:
        return {k: d.domain() for k, d in self.search.items()}

    def scheduler(self):
        from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

        class NoDecisionAtTheEnd(PopulationBasedTraining):
            """PBT that takes no decision on a trial's last report: an exploit there would restart
            the trial from its donor's final checkpoint, where it trains no further, and the
            trial would end as a copy of its donor under a configuration it never trained with.
            The report does not enter PBT's state either, so no trial copies a finished one."""

            def on_trial_result(self, tune_controller, trial, result):
                if result.get("final"):
                    return TrialScheduler.CONTINUE
                return super().on_trial_result(tune_controller, trial, result)

        def clamp(config: dict) -> dict:
            return {
                k: self.search[k].clamp(v) if k in self.search else v for k, v in config.items()
            }

        return NoDecisionAtTheEnd(
            time_attr="step",
            perturbation_interval=self.perturbation_interval,
            hyperparam_mutations={k: d.mutation() for k, d in self.search.items()},
            quantile_fraction=self.quantile_fraction,
            resample_probability=self.resample_probability,
            custom_explore_fn=clamp,
            synch=self.synch,
        )


def load_space(path: str | Path, *, data_kind: str | None = None) -> SearchSpace:
    """Parse and check a space file; `data_kind` ("oracle" | "text") checks the metric too."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RayganError(f"cannot read search space {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RayganError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise RayganError(f"{path}: expected a mapping of {', '.join(SPACE_KEYS)}")
    unknown = set(raw) - set(SPACE_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, SPACE_KEYS, n=1)
        raise RayganError(
            f"{path}: unknown key {key!r}"
            + (f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(SPACE_KEYS)}")
        )
    for key in ("metric", "search"):
        if key not in raw:
            raise RayganError(f"{path}: missing {key!r}")
    fixed = {}
    for key, value in (raw.get("fixed") or {}).items():
        fixed[_field(path, f"fixed.{key}", key)] = value
    search = {}
    if not isinstance(raw["search"], dict) or not raw["search"]:
        raise RayganError(f"{path}: `search` must map config keys to distributions")
    for key, spec in raw["search"].items():
        name = _field(path, f"search.{key}", key)
        if name in fixed:
            raise RayganError(f"{path}: {name} is both fixed and searched")
        search[name] = _dist(path, name, spec)
    interval = raw.get("perturbation_interval", 100)
    space = SearchSpace(
        metric=str(raw["metric"]),
        mode=str(raw.get("mode", "min")),
        trials=raw.get("trials", 4),
        perturbation_interval=interval,
        report_every=raw.get("report_every", interval),
        quantile_fraction=raw.get("quantile_fraction", 0.25),
        resample_probability=raw.get("resample_probability", 0.25),
        synch=raw.get("synch", False),
        keep_checkpoints=raw.get("keep_checkpoints"),
        fixed=fixed,
        search=search,
        source=str(path),
    )
    _check(space, data_kind)
    return space


def _field(path: Path, where: str, key: str) -> str:
    try:
        _, name = resolve_key(str(key))
    except RayganError as exc:
        raise RayganError(f"{path}: {where}: {exc}") from None
    return name


def _dist(path: Path, name: str, spec: Any) -> Dist:
    where = f"{path}: search.{name}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise RayganError(
            f"{where}: expected one distribution, e.g. {{loguniform: [1.0e-5, 1.0e-3]}}; "
            f"got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1)
        raise RayganError(
            f"{where}: unknown distribution {kind!r}"
            + (f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(DISTRIBUTIONS)}")
        )
    if not isinstance(args, list) or not args:
        raise RayganError(f"{where}: {kind} needs a non-empty list, got {args!r}")
    if kind == "choice":
        if len(set(map(str, args))) != len(args):
            raise RayganError(f"{where}: choice lists a value twice: {args}")
        return Dist(name, kind, tuple(args))
    if len(args) != 2 or not all(
        isinstance(a, int | float) and not isinstance(a, bool) for a in args
    ):
        raise RayganError(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    is_int_field = _field_type(name) is int
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise RayganError(f"{where}: randint needs integer bounds, got {args!r}")
    if kind != "randint" and is_int_field:
        raise RayganError(f"{where}: {name} is an integer; use randint or choice, not {kind}")
    if low >= high:
        what = "empty" if low == high else "inverted"
        raise RayganError(
            f"{where}: the range [{low}, {high}] is {what} (low must be < high; "
            "a single value belongs under `fixed`)"
        )
    if kind == "loguniform" and low <= 0:
        raise RayganError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint":
        return Dist(name, kind, (int(low), int(high)))
    return Dist(name, kind, (float(low), float(high)))


def _field_type(name: str) -> type:
    import typing

    from raygan.core.config import sections

    section = Config.keys()[name]
    hint = typing.get_type_hints(sections()[section])[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _check(space: SearchSpace, data_kind: str | None) -> None:
    where = space.source
    if space.mode not in ("min", "max"):
        raise RayganError(f"{where}: mode must be min or max, got {space.mode!r}")
    known = (
        METRICS.get(data_kind)
        if data_kind
        else {k: v for m in METRICS.values() for k, v in m.items()}
    )
    if space.metric not in known:
        kind = f"on {data_kind} data" if data_kind else "by any trial"
        raise RayganError(
            f"{where}: metric {space.metric!r} is not reported {kind}; "
            f"reported: {', '.join(sorted(known))}"
        )
    if known[space.metric] != space.mode:
        raise RayganError(
            f"{where}: {space.metric} is better when {'lower' if known[space.metric] == 'min' else 'higher'}: "
            f"mode must be {known[space.metric]}"
        )
    for name in ("trials", "perturbation_interval", "report_every"):
        _check_positive_int(space, name)
    if space.perturbation_interval % space.report_every:
        raise RayganError(
            f"{where}: report_every={space.report_every} must divide "
            f"perturbation_interval={space.perturbation_interval} (PBT decides at checkpoints)"
        )
    if not 0 < space.quantile_fraction <= 0.5:
        raise RayganError(
            f"{where}: quantile_fraction must be in (0, 0.5], got {space.quantile_fraction}"
        )
    if not 0 <= space.resample_probability <= 1:
        raise RayganError(
            f"{where}: resample_probability must be in [0, 1], got {space.resample_probability}"
        )
    if space.keep_checkpoints is not None:
        _check_positive_int(space, "keep_checkpoints")
    if not isinstance(space.synch, bool):
        raise RayganError(f"{where}: synch must be true or false, got {space.synch!r}")
    if not all(
        math.isfinite(a) for d in space.search.values() if d.kind != "choice" for a in d.args
    ):
        raise RayganError(f"{where}: search bounds must be finite numbers")


def _check_positive_int(space: SearchSpace, name: str) -> None:
    value = getattr(space, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RayganError(f"{space.source}: {name} must be a positive integer, got {value!r}")
