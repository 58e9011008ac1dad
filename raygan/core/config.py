"""Typed configuration: one frozen dataclass per component, defaults in one visible place.

Every field is documented by the string under it. `from_dict` refuses unknown keys, naming the
closest valid ones, and `apply_overrides` turns `key=value` strings (bare or `section.key`) into a
new config, so the CLI, YAML files and Tune search spaces share one schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raygan.core.errors import RayganError

ESTIMATORS = ("gumbel", "rollout", "dense", "constant")
LOSSES = ("standard", "rsgan", "hinge", "wgan-gp")
ANNEAL_SCHEDULES = ("exp", "linear")
REWARDS = ("prob", "log_prob", "logit")
BASELINES = ("ema",)
REDUCTIONS = ("mean", "sum")
D_INITS = ("fresh", "generator")
D_FORMS = ("classifier", "log_ratio")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    vocab_size: int = 5000
    """Number of token ids, special tokens included."""
    max_len: int = 20
    """Tokens per sequence (EOS included, BOS excluded); shorter sequences are padded."""
    g_embed_dim: int = 32
    """Generator embedding width (SeqGAN: 32)."""
    g_hidden_dim: int = 32
    """Generator LSTM width (SeqGAN: 32)."""
    g_layers: int = 1
    """Generator LSTM layers."""
    z_dim: int = 0
    """Latent code z ~ N(0, I) per sequence, fed at every step; 0 turns it off."""
    g_init_std: float = 0.1
    """Every G parameter starts ~ N(0, g_init_std^2) as in SeqGAN; 0 keeps PyTorch's defaults
    (which pretrain markedly slower on the SeqGAN oracle: BENCHMARKS.md)."""
    d_embed_dim: int = 64
    """Discriminator embedding width."""
    d_hidden_dim: int = 64
    """Discriminator LSTM width."""
    d_layers: int = 1
    """Discriminator LSTM layers."""
    d_dropout: float = 0.25
    """Dropout on the discriminator's embeddings and LSTM outputs (classifier only)."""
    d_form: str = "classifier"
    """What D's logit is: classifier (an LSTM over the tokens with a logit head), or log_ratio,
    log p_phi(x) - log p_G(x) with phi a language model of D's sizes and G the live generator
    (scored without gradient). Trained by D's standard loss, log_ratio is noise-contrastive
    estimation with G as the noise: at its optimum p_phi = p_data and the logit is the optimal
    D's. It ranks G's own samples by how much likelier they are under phi than under G, which a
    classifier has to learn from scratch. Token ids only (no gumbel estimator) and z_dim=0."""
    d_experts: int = 1
    """log_ratio only: phi is the equal mixture of this many language models of D's sizes, each
    from its own initialisation (p_phi = mean_k p_k): a mixture's log-likelihood of any
    sequence is at least the mean of its members' (Jensen), at K times phi's cost."""
    phi_dropout: float = 0.0
    """log_ratio only: dropout on each of phi's language models' embeddings and LSTM outputs
    while D trains (its maximum-likelihood pretraining included); D scores without it. The usual
    regulariser of a language model against memorising its training rows: on the SeqGAN oracle
    0.1 in nce_mix lowers G's copying and a third to nearly half of its sharpening with it, on
    average over 3 seeds (BENCHMARKS.md, phi_dropout)."""
    start_id: int = 0
    """Token fed to G at t=0: BOS for text corpora, 0 for the SeqGAN oracle."""
    eos_id: int | None = None
    """End-of-sequence id for variable-length corpora; None means fixed-length sequences."""
    pad_id: int | None = None
    """Padding id after EOS; required when eos_id is set."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "g_embed_dim", "g_hidden_dim", "g_layers"):
            _check_positive(self, name)
        for name in ("d_embed_dim", "d_hidden_dim", "d_layers", "d_experts"):
            _check_positive(self, name)
        if self.z_dim < 0 or self.g_init_std < 0:
            raise RayganError(
                f"z_dim and g_init_std must be >= 0, got {self.z_dim} and {self.g_init_std}"
            )
        for name in ("d_dropout", "phi_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise RayganError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.phi_dropout and self.d_form != "log_ratio":
            raise RayganError(
                f"phi_dropout={self.phi_dropout} regularises the language models of "
                f"d_form=log_ratio (got d_form={self.d_form!r}); d_dropout is the classifier's"
            )
        _check_choice(self, "d_form", D_FORMS)
        if self.d_experts > 1 and self.d_form != "log_ratio":
            raise RayganError(
                f"d_experts={self.d_experts} mixes D's language models, which only "
                f"d_form=log_ratio has (got d_form={self.d_form!r}); set d_experts=1"
            )
        if self.d_form == "log_ratio" and self.z_dim:
            raise RayganError(
                f"d_form=log_ratio needs G's likelihood of a sequence, which a latent z "
                f"(z_dim={self.z_dim}) makes intractable; set z_dim=0 or d_form=classifier"
            )
        if (self.eos_id is None) != (self.pad_id is None):
            raise RayganError(
                f"eos_id and pad_id must be set together, got eos_id={self.eos_id} "
                f"pad_id={self.pad_id}"
            )
        for name in ("start_id", "eos_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise RayganError(
                    f"{name} must be in [0, vocab_size={self.vocab_size}), got {value}"
                )

    @property
    def variable_length(self) -> bool:
        return self.eos_id is not None


@dataclass(frozen=True, kw_only=True)
class GANConfig:
    estimator: str = "rollout"
    """How G's gradient crosses the discrete tokens: gumbel (RelGAN), rollout (SeqGAN), dense
    (ScratchGAN), or constant: the control, REINFORCE on G's own samples with `constant_reward`
    for every token and D ignored (no D steps), which shows what the update does without D."""
    loss: str = "standard"
    """Adversarial objective: standard (non-saturating), rsgan, hinge, wgan-gp (gumbel only)."""
    g_lr: float = 1e-3
    """Generator Adam learning rate in adversarial training."""
    d_lr: float = 1e-3
    """Discriminator Adam learning rate (unless d_lr_ratio is set). At 1e-4 an LSTM D stays
    near chance for thousands of steps on the SeqGAN oracle; at 1e-3 it learns."""
    d_lr_ratio: float | None = None
    """When set, D's learning rate is g_lr x d_lr_ratio and d_lr is ignored: the G/D balance as
    one number, which is what a search over the balance should move."""
    mle_lr: float = 1e-2
    """Generator Adam learning rate during MLE pretraining (SeqGAN: 0.01)."""
    d_steps: int = 5
    """Discriminator updates per generator update."""
    grad_clip: float = 5.0
    """Max global gradient norm for G and D; 0 disables clipping."""
    adam_beta1: float = 0.9
    """Adam beta1 for both networks."""
    gumbel_max_temperature: float = 100.0
    """Final inverse temperature beta of the Gumbel-softmax (RelGAN: 100 or 1000); starts at 1."""
    gumbel_anneal: str = "exp"
    """Schedule of beta from 1 to the max over the adversarial steps: exp or linear."""
    gumbel_anneal_steps: int = 0
    """Steps over which beta reaches its max; 0 means the run's adv_steps. RelGAN fixes it at
    5,000 whatever the run's length (beta_n = beta_max^(n/5000)), past which beta stays at max."""
    rollout_num: int = 4
    """Monte-Carlo completions per prefix for the rollout estimator (SeqGAN: 16)."""
    dense_gamma: float = 0.23
    """Discount of per-step rewards for the dense estimator (ScratchGAN: 0.23)."""
    reward: str = "logit"
    """What a REINFORCE estimator (rollout, dense) is paid from D's logit s: prob = sigmoid(s)
    (SeqGAN; ScratchGAN's 2 sigmoid(s) - 1 up to scale), log_prob = log sigmoid(s), logit = s
    itself, at D's optimum log p_data(x) - log p_G(x): the reverse-KL gradient."""
    reward_baseline: str | None = "ema"
    """Subtracted from every reward: none (SeqGAN) or ema, a per-position moving average of the
    batch's rewards (ScratchGAN), which removes the free sharpening a positive reward gives."""
    baseline_decay: float = 0.8
    """Moving-average decay of the per-position reward baseline (0: the current batch's mean)."""
    pg_reduction: str = "mean"
    """REINFORCE loss over the batch's tokens: mean, or sum as SeqGAN (64 x 20 terms, so with
    gradient clipping every step is clipped to grad_clip)."""
    constant_reward: float = 0.5
    """The reward of every token under estimator=constant (the control)."""
    d_init: str = "fresh"
    """D's embedding and LSTM at the start of D pretraining: fresh, or copied from the (MLE)
    generator (Caccia et al.; needs D's sizes equal to G's and z_dim=0)."""
    d_weight_decay: float = 0.0
    """Decoupled weight decay of D's Adam (AdamW): a regulariser against memorising the real set."""
    gp_weight: float = 10.0
    """Gradient-penalty weight for wgan-gp."""

    def __post_init__(self) -> None:
        _check_choice(self, "estimator", ESTIMATORS)
        _check_choice(self, "loss", LOSSES)
        _check_choice(self, "gumbel_anneal", ANNEAL_SCHEDULES)
        if self.loss == "wgan-gp" and self.estimator != "gumbel":
            raise RayganError(
                f"loss='wgan-gp' needs soft inputs: estimator must be 'gumbel', got {self.estimator!r}"
            )
        _check_choice(self, "reward", REWARDS)
        if self.reward_baseline is not None:
            _check_choice(self, "reward_baseline", BASELINES)
        _check_choice(self, "pg_reduction", REDUCTIONS)
        _check_choice(self, "d_init", D_INITS)
        for name in ("g_lr", "d_lr", "mle_lr", "d_steps", "rollout_num"):
            _check_positive(self, name)
        if self.gumbel_anneal_steps < 0 or self.d_weight_decay < 0:
            raise RayganError(
                f"gumbel_anneal_steps and d_weight_decay must be >= 0, got "
                f"{self.gumbel_anneal_steps} and {self.d_weight_decay}"
            )
        if self.gumbel_max_temperature < 1.0:
            raise RayganError(
                f"gumbel_max_temperature must be >= 1, got {self.gumbel_max_temperature}"
            )
        for name in ("dense_gamma", "baseline_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise RayganError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise RayganError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.d_lr_ratio is not None:
            _check_positive(self, "d_lr_ratio")

    @property
    def disc_lr(self) -> float:
        """The discriminator's learning rate in effect."""
        return self.g_lr * self.d_lr_ratio if self.d_lr_ratio is not None else self.d_lr


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    recipe: str = ""
    """The shipped recipe (raygan/recipes/NAME.yaml, `raygan recipes`) whose keys this config
    starts from; every other setting overrides it. '' for none."""
    seed: int = 0
    """Seeds parameters, data order and sampling."""
    batch_size: int = 64
    """Sequences per step, summed over all workers (SeqGAN: 64)."""
    mle_steps: int = 2000
    """MLE pretraining steps of G (0 skips pretraining)."""
    d_pretrain_steps: int = 1000
    """Discriminator steps on G's samples before adversarial training (the cap, when
    d_pretrain_until_acc ends it earlier). Without them the adversarial phase starts against
    an untrained D, whose rewards are noise."""
    d_mle_steps: int = 0
    """The first steps of D pretraining that train a log_ratio D's language model phi by
    maximum likelihood on real rows (at mle_lr, G's MLE lr), before its noise-contrastive steps
    (at D's lr): phi's optimum under both is p_data, and MLE gets there with a full-softmax
    gradient per token. Counted inside d_pretrain_steps (all of them when d_pretrain_steps is
    smaller, so d_pretrain_steps=0 still skips D pretraining); 0 skips it."""
    d_pretrain_pool: int = 0
    """G samples D pretraining draws its fakes from, regenerated every d_pretrain_refresh steps
    (SeqGAN's rounds: 10,000 negatives, 3 epochs each); 0 draws fresh samples at every step."""
    d_pretrain_refresh: int = 500
    """D pretraining steps between regenerations of the pool."""
    d_pretrain_until_acc: float = 0.0
    """End D pretraining once D's held-out accuracy (real test sequences vs fresh G samples,
    checked at every evaluation) reaches this; 0 runs all d_pretrain_steps."""
    adv_steps: int = 1000
    """Adversarial generator steps (each preceded by d_steps discriminator steps)."""
    eval_every: int = 200
    """Steps between evaluations (NLL metrics, D's held-out accuracy)."""
    d_pretrain_eval_every: int = 0
    """Steps between evaluations during D pretraining, where G (and so every NLL) is fixed and
    only D's accuracy moves; 0 means eval_every."""
    eval_samples: int = 1000
    """Samples drawn for NLL_oracle / BLEU at each evaluation."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "eval_every", "eval_samples", "d_pretrain_refresh"):
            _check_positive(self, name)
        if self.d_pretrain_pool < 0 or self.d_pretrain_eval_every < 0:
            raise RayganError(
                f"d_pretrain_pool and d_pretrain_eval_every must be >= 0, got "
                f"{self.d_pretrain_pool} and {self.d_pretrain_eval_every}"
            )
        if not 0.0 <= self.d_pretrain_until_acc < 1.0:
            raise RayganError(
                f"d_pretrain_until_acc must be in [0, 1), got {self.d_pretrain_until_acc}"
            )
        for name in ("mle_steps", "d_pretrain_steps", "d_mle_steps", "adv_steps"):
            if getattr(self, name) < 0:
                raise RayganError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def total_steps(self) -> int:
        return self.mle_steps + self.d_pretrain_steps + self.adv_steps


MONITORS = ("nll_test", "g_loss")
READERS = ("auto", "memory", "stream")


@dataclass(frozen=True, kw_only=True)
class PlacementConfig:
    """Where and how Ray Train runs the loop; the loop itself (raygan.run.loop) never reads these."""

    num_workers: int = 2
    """Ray Train workers; G and D are each wrapped in DDP across them."""
    use_gpu: bool = False
    """One GPU per worker, NCCL backend; CPU workers use gloo."""
    cpus_per_worker: float = 1.0
    """CPUs reserved per worker."""
    keep_checkpoints: int = 3
    """Checkpoints kept by Ray Train (the newest)."""
    max_failures: int = 2
    """Worker-group restarts from the last checkpoint before the run fails."""
    log_level: str = "WARNING"
    """Ray Train's console log level (DEBUG, INFO, WARNING, ERROR); INFO shows every report."""

    def __post_init__(self) -> None:
        for name in ("num_workers", "cpus_per_worker", "keep_checkpoints"):
            _check_positive(self, name)
        _check_choice(self, "log_level", ("DEBUG", "INFO", "WARNING", "ERROR"))
        if self.max_failures < 0:
            raise RayganError(f"max_failures must be >= 0, got {self.max_failures}")


@dataclass(frozen=True, kw_only=True)
class TrainerConfig:
    """How the loop runs: precision, checkpoint cadence, early stopping, random streams, start."""

    bf16: bool = False
    """bf16 autocast for forward passes on CUDA (ignored on CPU, with a warning)."""
    checkpoint_every: int = 200
    """Steps between checkpoints (a step is one MLE, D-pretrain or adversarial G step)."""
    patience: int = 0
    """Early stopping: evaluations without improvement of `monitor` before stopping; 0 disables."""
    monitor: str = "nll_test"
    """Early-stopping metric: nll_test (held-out NLL, lower is better) or g_loss (see g_loss_threshold)."""
    g_loss_threshold: float = 0.0
    """With monitor=g_loss: stop once the adversarial G loss falls under this value."""
    rng_streams: int = 0
    """Random streams the global batch is split into (0: one per worker). Equal values make runs
    with different worker counts draw the same samples."""
    init_from: str = ""
    """Checkpoint directory whose G (and D) weights start this run; its vocab must match the data."""
    fail_at_step: int = -1
    """Test hook: the last worker SIGKILLs itself on reaching this step, on the first attempt only."""
    reader: str = "auto"
    """How a worker reads the train split: memory (all of it in RAM, shuffled whole each epoch),
    stream (Parquet row groups through a shuffle buffer of reader_buffer_rows rows: memory
    bounded whatever the corpus), or auto: stream when the split has more rows than the buffer.
    The two orders differ (raygan.data.read); the run summary says which one ran."""
    reader_buffer_rows: int = 1_000_000
    """Rows a streaming reader shuffles together (~80 MB at 20 tokens a row); at least one
    global batch."""

    def __post_init__(self) -> None:
        _check_positive(self, "checkpoint_every")
        _check_positive(self, "reader_buffer_rows")
        _check_choice(self, "monitor", MONITORS)
        _check_choice(self, "reader", READERS)
        if self.patience < 0 or self.rng_streams < 0:
            raise RayganError("patience and rng_streams must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)

    def __post_init__(self) -> None:
        if self.model.d_form == "log_ratio" and self.gan.estimator == "gumbel":
            raise RayganError(
                "d_form=log_ratio scores token ids by likelihood; estimator=gumbel feeds D soft "
                "one-hots, which have none (use rollout, dense or constant, or d_form=classifier)"
            )
        if self.schedule.d_mle_steps and self.model.d_form != "log_ratio":
            raise RayganError(
                f"d_mle_steps={self.schedule.d_mle_steps} trains D's language model, which only "
                f"d_form=log_ratio has (got d_form={self.model.d_form!r}); set d_mle_steps=0"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a nested dict (`{"gan": {"d_steps": 3}}`) or flat keys (`{"d_steps": 3}`)."""
        return apply_overrides(cls(), data)

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Every bare field name mapped to its section."""
        return {
            f.name: section for section, sub in sections().items() for f in dataclasses.fields(sub)
        }


def sections() -> dict[str, type]:
    return {
        "model": ModelConfig,
        "gan": GANConfig,
        "schedule": ScheduleConfig,
        "trainer": TrainerConfig,
        "placement": PlacementConfig,
    }


RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The shipped recipe's file; an unknown name is an error listing the valid ones."""
    path = RECIPE_DIR / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        raise RayganError(f"unknown recipe {name!r}; valid recipes: {', '.join(recipe_names())}")
    return path


def load_recipe(name: str) -> dict[str, Any]:
    """A recipe's config keys (flat or nested, as in a --config file)."""
    import yaml

    path = recipe_path(name)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or any(resolve_key(k)[1] == "recipe" for k in flatten(data)):
        raise RayganError(f"recipe {path} must be a mapping of config keys other than `recipe`")
    return data


def recipe_summary(name: str) -> str:
    """The recipe's first comment line: what `raygan recipes` prints for it."""
    for line in recipe_path(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def apply_overrides(config: Config, overrides: dict[str, Any] | list[str]) -> Config:
    """Return `config` with overrides applied; keys are `name` or `section.name`.

    A list is parsed as `key=value` strings; values are converted to the field's type. A
    `recipe` key applies that recipe's keys first, then the other overrides on top of them.
    """
    if isinstance(overrides, list):
        overrides = parse_key_values(overrides)
    flat = flatten(overrides)
    recipe_keys = [k for k in flat if resolve_key(k) == ("schedule", "recipe")]
    if recipe_keys:
        name = flat.pop(recipe_keys[-1])
        name = "" if name is None or str(name).lower() in ("", "none", "null") else str(name)
        for key in recipe_keys:
            flat.pop(key, None)
        if name:
            config = apply_overrides(config, load_recipe(name))
        config = dataclasses.replace(
            config, schedule=dataclasses.replace(config.schedule, recipe=name)
        )
    per_section: dict[str, dict[str, Any]] = {name: {} for name in sections()}
    for key, value in flat.items():
        section, name = resolve_key(key)
        per_section[section][name] = _convert(section, name, value)
    return Config(
        **{
            section: dataclasses.replace(getattr(config, section), **values)
            for section, values in per_section.items()
        }
    )


def resolve_key(key: str) -> tuple[str, str]:
    """Map `d_steps` or `gan.d_steps` to ("gan", "d_steps"); unknown keys raise ValueError."""
    owners = Config.keys()
    if "." in key:
        section, name = key.split(".", 1)
        if section in sections() and owners.get(name) == section:
            return section, name
        if section == "trainer" and owners.get(name) == "placement":
            return "placement", name  # a config (checkpoint, run.json) from before that section
    elif key in owners:
        return owners[key], key
    valid = sorted(owners) + sorted(f"{s}.{n}" for n, s in owners.items())
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    hint = (
        f"; did you mean {', '.join(close)}?"
        if close
        else f"; valid keys: {', '.join(sorted(owners))}"
    )
    raise RayganError(f"unknown config key {key!r}{hint}")


def parse_key_values(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RayganError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections() and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _convert(section: str, name: str, value: Any) -> Any:
    """Coerce a YAML/CLI value to the field's declared type, naming the field on failure."""
    hint = typing.get_type_hints(sections()[section])[name]
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in allowed:
            return None
        raise RayganError(f"config key {name!r} cannot be None")
    target = next(t for t in allowed if t is not type(None))
    try:
        if target is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return (
                int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            )
        if target is float:
            return float(value)
        return target(value)
    except (TypeError, ValueError):
        raise RayganError(f"config key {name!r} expects {target.__name__}, got {value!r}") from None


def _check_positive(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    if value <= 0:
        raise RayganError(f"{name} must be > 0, got {value}")


def _check_choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise RayganError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
