"""The per-worker training loop: MLE pretraining, D pretraining, then adversarial training.

It imports no Ray. Ray Train runs it on every worker (raygan.run.train); one process can run it at
world size 1 (the reference the distributed tests compare against). Each caller passes a
`WorkerContext` with its reporting call, the checkpoint to resume from, and the function that
wraps a model for data parallelism.

Determinism: every step reseeds its random streams from (seed, step, stream) and the data position
is a batch counter, so a resumed run repeats exactly what the uninterrupted run would have done.
The global batch's rows are split into `rng_streams` random streams; a worker draws only its own
rows' streams, so W workers together draw what one process with the same streams draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from raygan.core.config import Config
from raygan.core.errors import RayganError
from raygan.core.frontier import frontier_distance
from raygan.core.gan import (
    FakePool,
    adversarial_step,
    d_mle_step,
    d_step,
    gumbel_beta,
    mle_step,
    set_lr,
)
from raygan.core.malloc import keep_freed_memory
from raygan.core.metrics import d_accuracy_key
from raygan.core.models import Generator, make_discriminator, unwrap
from raygan.core.sampler import RowStreams
from raygan.data import storage
from raygan.run.checkpoint import load_checkpoint, save_checkpoint

PHASES = ("mle", "d_pretrain", "adversarial")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One training run as it crosses the Ray boundary to every worker (and, less the console,
    as RUN_DIR/run.json)."""

    config: Config
    data_dir: str
    """The prepared corpus (a path or URI every worker can read)."""
    run_dir: str | None = None
    """Where TensorBoard events and the fail_at_step marker go; None: nowhere."""
    frontier: tuple[tuple[float, float], ...] | None = None
    """MLE's temperature curve as (NLL_test, NLL_oracle) points: evaluations then report
    frontier_distance (PBT's objective)."""
    checkpoint_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Added to every checkpoint's meta (a Tune trial's id)."""
    console: str | None = None
    """The driver's progress channel (raygan.run.console) rank 0 reports to; None: none."""

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "data_dir": self.data_dir, "run_dir": self.run_dir}


@dataclasses.dataclass
class WorkerContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    report: Callable[[dict[str, Any], str | None], None] = lambda metrics, checkpoint: None
    """Called on every rank at each checkpoint; rank 0 passes the checkpoint directory."""
    restore_dir: str | None = None
    """Checkpoint to resume from (None: a fresh start)."""
    prepare_model: Callable[[nn.Module], nn.Module] = lambda model: model
    """Moves a model to the device and wraps it for data parallelism."""
    node_id: str = "local"
    """Where this worker runs (the summary lists every worker's node)."""
    console: Any = None
    """Rank 0's raygan.run.console.WorkerConsole when the driver shows a progress bar, else None."""


def _mix(*words: int) -> int:
    """A well-spread 63-bit seed from integers (seed, step, stream, ...)."""
    return int(np.random.SeedSequence(list(words)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def phase_of(step: int, cfg: Config) -> tuple[str, int, int]:
    """(phase, first step of the phase, steps in the phase) for a global step."""
    start = 0
    sizes = (cfg.schedule.mle_steps, cfg.schedule.d_pretrain_steps, cfg.schedule.adv_steps)
    for name, size in zip(PHASES, sizes, strict=True):
        if step < start + size:
            return name, start, size
        start += size
    return "done", start, 0


class BatchStream:
    """This rank's real batches as an endless iterator over epochs; `consumed` is the data position.

    `reader` (TrainerConfig.reader): RankBatches (the split in RAM) or StreamBatches (a bounded
    shuffle buffer); `auto` streams a split of more rows than `buffer_rows`. `self.reader` says
    which one runs."""

    def __init__(
        self,
        data_dir: str,
        *,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        consumed: int = 0,
        device: torch.device | None = None,
        reader: str = "memory",
        buffer_rows: int = 1_000_000,
    ):
        from raygan.data.read import RankBatches, StreamBatches, load_manifest

        if reader == "auto":
            rows = load_manifest(data_dir)["splits"]["train"]["rows"]
            reader = "stream" if rows > buffer_rows else "memory"
        common = {"batch_size_per_rank": batch_size, "rank": rank, "world_size": world_size,
                  "seed": seed}  # fmt: skip
        if reader == "stream":
            self._batches = StreamBatches(data_dir, buffer_rows=buffer_rows, **common)
        else:
            self._batches = RankBatches(data_dir, **common)
        self.reader = reader
        self.steps_per_epoch = self._batches.steps_per_epoch
        self.consumed, self.device, self._iter, self._epoch = consumed, device, None, -1

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, position = divmod(self.consumed, self.steps_per_epoch)
        if epoch != self._epoch:
            self._iter, self._epoch = self._batches.iter_epoch(epoch, position), epoch
        tokens_BT, lengths_B = next(self._iter)
        self.consumed += 1
        return tokens_BT.to(self.device), lengths_B.to(self.device)


@dataclasses.dataclass
class EarlyStopping:
    """Ends the current phase when `monitor` stalls for `patience` evaluations, when held-out NLL
    rises while training NLL falls for `patience` evaluations, or when G's loss is under a
    threshold. D pretraining (G fixed: its NLL cannot move) ends instead when D's held-out
    accuracy reaches `d_target` (0: never)."""

    monitor: str
    patience: int
    threshold: float
    d_target: float = 0.0
    d_key: str = "d_acc"
    best: float = math.inf
    stalled: int = 0
    diverging: int = 0
    last: dict = dataclasses.field(default_factory=dict)

    def reset(self) -> None:
        self.best, self.stalled, self.diverging, self.last = math.inf, 0, 0, {}

    def update(self, metrics: dict[str, float], phase: str) -> str | None:
        if phase == "d_pretrain":
            accuracy = metrics.get(self.d_key)
            if self.d_target and accuracy is not None and accuracy >= self.d_target:
                return f"D's held-out {self.d_key} {accuracy:.3f} reached d_pretrain_until_acc={self.d_target}"
            return None
        if self.monitor == "g_loss":
            loss = metrics.get("g_loss")
            if phase == "adversarial" and loss is not None and loss < self.threshold:
                return f"g_loss {loss:.4f} fell under the threshold {self.threshold}"
            return None
        if not self.patience or "nll_test" not in metrics:
            return None
        test, train = metrics["nll_test"], metrics.get("nll_train")
        if test < self.best - 1e-4:
            self.best, self.stalled = test, 0
        else:
            self.stalled += 1
        if self.last and train is not None:
            rising = test > self.last["nll_test"] and train < self.last["nll_train"]
            self.diverging = self.diverging + 1 if rising else 0
        self.last = {"nll_test": test, "nll_train": train}
        if self.diverging >= self.patience:  # the more specific diagnosis of a stall
            return f"overfitting: held-out NLL rose while training NLL fell for {self.patience} evaluations"
        if self.stalled >= self.patience:
            return (
                f"nll_test has not improved for {self.patience} evaluations (best {self.best:.4f})"
            )
        return None

    def state(self) -> dict:
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("monitor", "patience", "threshold", "d_target", "d_key")
        }


class HeldOutMetrics:
    """Held-out metrics on rank 0: NLL_test, NLL on a training subset, NLL_oracle (oracle data),
    BLEU-4 / Self-BLEU-4 (text), D's accuracy on held-out real sequences vs the fresh samples
    drawn here (raygan.core.metrics.heldout_d_accuracy), and a few decoded samples."""

    def __init__(
        self, data_dir: str, cfg: Config, device: torch.device, frontier: list | None = None
    ):
        from raygan.data.read import load_codec, load_manifest, load_oracle, read_split

        self.cfg, self.device = cfg, device
        self.frontier = [tuple(p) for p in frontier] if frontier else None
        n = cfg.schedule.eval_samples
        test_NT, test_len_N = read_split(data_dir, "test")
        train_NT, train_len_N = read_split(data_dir, "train")
        self.test = (test_NT[:n], test_len_N[:n])
        self.train = (train_NT[:n], train_len_N[:n])
        manifest = load_manifest(data_dir)
        self.oracle = load_oracle(data_dir) if manifest["kind"] == "oracle" else None
        self.codec = load_codec(data_dir)
        self.references = None
        if self.oracle is None:
            from raygan.core.bleu import BleuReference, bleu_tokens

            self.references = BleuReference(bleu_tokens(test_NT, test_len_N, cfg.model.eos_id), max_n=4)

    def __call__(self, gen: nn.Module, seed: int, disc: nn.Module | None = None) -> dict[str, Any]:
        from raygan.core.metrics import heldout_d_accuracy, mean_token_nll, sample_tokens

        out: dict[str, Any] = {
            "nll_test": mean_token_nll(gen, *self.test),
            "nll_train": mean_token_nll(gen, *self.train),
        }
        samples = sample_tokens(gen, self.cfg.schedule.eval_samples, seed=seed)
        if disc is not None:
            out.update(heldout_d_accuracy(disc, *self.test, samples.tokens_BT, samples.lengths_B))
        if self.oracle is not None:
            out["nll_oracle"] = mean_token_nll(self.oracle, samples.tokens_BT)
            if self.frontier:  # PBT's objective: how far below MLE's curve G has moved
                point = (out["nll_test"], out["nll_oracle"])
                out["frontier_distance"] = frontier_distance(self.frontier, point, extrapolate=True)
        else:
            from raygan.core.bleu import bleu_tokens, self_bleu

            hyps = bleu_tokens(samples.tokens_BT, samples.lengths_B, self.cfg.model.eos_id)
            out["bleu4"] = self.references.bleu(hyps, 4)
            out["self_bleu4"] = self_bleu(hyps, 4) if len(hyps) > 1 else 0.0
            out["bleu_f4"] = bleu_f(out["bleu4"], out["self_bleu4"])
        out["samples"] = [self.codec.decode(row.tolist()) for row in samples.tokens_BT[:5]]
        return out


def bleu_f(bleu: float, self_bleu: float) -> float:
    """Harmonic mean of quality (BLEU against held-out text) and diversity (1 - Self-BLEU).

    Either failure drives it to 0: a collapsed G repeats itself (Self-BLEU -> 1) however fluent,
    and noise is diverse but matches nothing (BLEU -> 0). A sum would let a large gain in one
    buy a collapse in the other; the harmonic mean does not.
    """
    diversity = 1.0 - self_bleu
    return 0.0 if bleu + diversity <= 0 else 2 * bleu * diversity / (bleu + diversity)


class TensorBoard:
    """tensorboardX on rank 0; a no-op elsewhere. Events past a resumed step are purged. When the
    run directory is a URI, events are written locally and uploaded at every checkpoint."""

    def __init__(self, run_dir: str | None, rank: int, start_step: int):
        self.writer, self.staging, self.dest = None, None, None
        if rank == 0 and run_dir:
            from tensorboardX import SummaryWriter

            logdir = storage.join(run_dir, "tb")
            if storage.is_uri(logdir):
                self.staging, self.dest = tempfile.mkdtemp(prefix="raygan-tb-"), logdir
                logdir = self.staging
            self.writer = SummaryWriter(logdir, purge_step=start_step or None)

    def scalars(self, stats: dict[str, Any], step: int, prefix: str) -> None:
        if self.writer is None:
            return
        for key, value in stats.items():
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def sync(self) -> None:
        if self.writer is not None and self.dest is not None:
            self.writer.flush()
            storage.sync(Path(self.staging), self.dest)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.sync()
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)


def _seed_step(cfg: Config, step: int, rank: int, world: int, device: torch.device) -> RowStreams:
    """Reseed this step's randomness: the global RNG (dropout) per rank, and sampling streams
    per slice of the global batch, so the numbers depend on (seed, step) and not on history."""
    torch.manual_seed(_mix(cfg.schedule.seed, step, 1_000_003 + rank))
    return _streams(cfg, (step,), rank, world, device)


def _streams(cfg: Config, key: tuple[int, ...], rank: int, world: int, device) -> RowStreams:
    """This rank's share of the global batch's random streams, seeded by (seed, *key, stream)."""
    streams = cfg.trainer.rng_streams or world
    if streams % world:
        raise RayganError(f"rng_streams={streams} must be a multiple of num_workers={world}")
    mine = range(rank * streams // world, (rank + 1) * streams // world)
    # Generators live on the training device: CUDA draws need a CUDA generator, and drawing the
    # Gumbel noise on the CPU would copy (B, V) floats per token to the GPU.
    return RowStreams(
        [torch.Generator(device=device).manual_seed(_mix(cfg.schedule.seed, *key, s)) for s in mine]
    )


def _autocast(cfg: Config, device: torch.device):
    if cfg.trainer.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_models(cfg: Config):
    torch.manual_seed(cfg.schedule.seed)  # every rank starts from the same weights
    gen = Generator(cfg.model)
    disc = make_discriminator(cfg.model, gen)
    betas = (cfg.gan.adam_beta1, 0.999)
    opt_mle = torch.optim.Adam(gen.parameters(), lr=cfg.gan.mle_lr, betas=betas)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.gan.g_lr, betas=betas)
    if cfg.gan.d_weight_decay:
        opt_d = torch.optim.AdamW(
            disc.parameters(), lr=cfg.gan.disc_lr, betas=betas, weight_decay=cfg.gan.d_weight_decay
        )
    else:
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.gan.disc_lr, betas=betas)
    return gen, disc, opt_mle, opt_g, opt_d


def uses_baseline(cfg: Config) -> bool:
    """Whether the run keeps a per-position reward baseline (a REINFORCE estimator with ema)."""
    return cfg.gan.estimator != "gumbel" and cfg.gan.reward_baseline == "ema"


D_SHAPE = ("d_form", "d_experts", "d_embed_dim", "d_hidden_dim", "d_layers")


def check_init_from(cfg: Config, other: Config | None = None) -> None:
    """RayganError where cfg.trainer.init_from cannot start this run: another vocabulary or
    length, or another D (form or sizes: it would start fresh) when the run goes straight to
    adversarial steps on D's reward without pretraining it. `other`: the checkpoint's config,
    read from it when not given (before Ray starts, so the mistake costs seconds)."""
    path = cfg.trainer.init_from
    if other is None:
        from raygan.run.checkpoint import checkpoint_config

        other = checkpoint_config(path)
    for field in ("vocab_size", "max_len"):
        mine, theirs = getattr(cfg.model, field), getattr(other.model, field)
        if mine != theirs:
            raise RayganError(
                f"init_from checkpoint {path} has {field}={theirs}, but the data's manifest has {field}={mine}"
            )
    s = cfg.schedule
    untrained = s.d_pretrain_steps == 0 and s.adv_steps and cfg.gan.estimator != "constant"
    differ = [k for k in D_SHAPE if getattr(cfg.model, k) != getattr(other.model, k)]
    if untrained and differ:
        theirs = ", ".join(f"{k}={getattr(other.model, k)}" for k in differ)
        mine = ", ".join(f"{k}={getattr(cfg.model, k)}" for k in differ)
        raise RayganError(
            f"init_from checkpoint {path} holds another discriminator ({theirs}; this config: "
            f"{mine}), and d_pretrain_steps=0 would start adversarial training with an untrained "
            "one: pretrain it (d_pretrain_steps > 0) or start from a checkpoint trained with this "
            "config's D (e.g. under the same recipe)"
        )


def _init_from(cfg: Config, gen: nn.Module, disc: nn.Module) -> None:
    state, other, _ = load_checkpoint(cfg.trainer.init_from)
    check_init_from(cfg, other)
    gen.load_state_dict(state["generator"])
    with contextlib.suppress(RuntimeError, KeyError):  # another D: it starts fresh (pretrained)
        disc.load_state_dict(state["discriminator"])


def train_loop(run: RunSpec, ctx: WorkerContext) -> dict[str, Any]:
    """Train the run on this worker (rank ctx.rank of ctx.world_size); returns a summary."""
    keep_freed_memory()  # this process steps and samples G over and over: see raygan.core.malloc
    cfg, data_dir, run_dir = run.config, run.data_dir, run.run_dir
    rank, world, device = ctx.rank, ctx.world_size, ctx.device
    if cfg.schedule.batch_size % world:
        raise RayganError(
            f"batch_size={cfg.schedule.batch_size} must be divisible by num_workers={world}"
        )
    if cfg.trainer.bf16 and device.type != "cuda":
        warnings.warn("bf16=True is ignored on CPU", stacklevel=1)

    gen, disc, opt_mle, opt_g, opt_d = build_models(cfg)
    step, consumed, baseline_T, train_s = 0, 0, None, 0.0
    stopper = EarlyStopping(
        cfg.trainer.monitor, cfg.trainer.patience, cfg.trainer.g_loss_threshold,
        d_target=cfg.schedule.d_pretrain_until_acc, d_key=d_accuracy_key(cfg.gan.loss),
    )  # fmt: skip
    history: list[dict] = []
    if ctx.restore_dir:
        state, _, _ = load_checkpoint(ctx.restore_dir)
        gen.load_state_dict(state["generator"])
        disc.load_state_dict(state["discriminator"])
        for opt, key in ((opt_mle, "opt_mle"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            opt.load_state_dict(state[key])
        step, consumed, baseline_T = state["step"], state["batches_consumed"], state["baseline_T"]
        train_s = state.get("train_s", 0.0)
        for key, value in state["early_stopping"].items():
            setattr(stopper, key, value)
        history = json.loads(state["history"])
        # The optimizers' state carries the learning rates of whoever wrote the checkpoint (under
        # PBT: the donor trial). Re-apply this run's own, so a mutated config takes effect at once.
        set_lr(opt_mle, cfg.gan.mle_lr)
        set_lr(opt_g, cfg.gan.g_lr)
        set_lr(opt_d, cfg.gan.disc_lr)
    elif cfg.trainer.init_from:
        _init_from(cfg, gen, disc)
    if not uses_baseline(cfg):
        baseline_T = None
    elif baseline_T is None:  # NaN: the first batch's mean sets it
        baseline_T = torch.full((cfg.model.max_len,), float("nan"))
    baseline_T = None if baseline_T is None else baseline_T.to(device)

    gen, disc = ctx.prepare_model(gen.to(device)), ctx.prepare_model(disc.to(device))
    per_rank = cfg.schedule.batch_size // world
    batches = BatchStream(data_dir, rank=rank, world_size=world, batch_size=per_rank,
                          seed=cfg.schedule.seed, consumed=consumed, device=device,
                          reader=cfg.trainer.reader,
                          buffer_rows=cfg.trainer.reader_buffer_rows)  # fmt: skip
    held_out = HeldOutMetrics(data_dir, cfg, device, run.frontier) if rank == 0 else None
    board = TensorBoard(run_dir, rank, step)
    reduce_mean = _all_reduce_mean if world > 1 else None
    worker_nodes = _all_gather(ctx.node_id, world)
    total, started, last_metrics = cfg.schedule.total_steps, time.perf_counter(), {}
    stop_reason: str | None = None
    pool: FakePool | None = None

    while step < total:
        phase, phase_start, phase_size = phase_of(step, cfg)
        rng = _seed_step(cfg, step, rank, world, device)
        step_started = time.perf_counter()
        if step == cfg.schedule.mle_steps and phase == "d_pretrain" and cfg.gan.d_init == "generator":
            # D pretraining starts from G's features; D is untouched until here, so a resume
            # at this very step repeats the same copy.
            unwrap(disc).init_from_generator(unwrap(gen))
        with _autocast(cfg, device):
            if phase == "mle":
                stats = mle_step(
                    gen, opt_mle, *next(batches), lr=cfg.gan.mle_lr, grad_clip=cfg.gan.grad_clip
                )
            elif phase == "d_pretrain" and step - phase_start < cfg.schedule.d_mle_steps:
                stats = d_mle_step(
                    disc, opt_d, *next(batches), lr=cfg.gan.mle_lr, grad_clip=cfg.gan.grad_clip
                )
            elif phase == "d_pretrain":
                fakes = None
                if cfg.schedule.d_pretrain_pool:
                    pool = _refreshed_pool(pool, gen, cfg, step - phase_start, rank, world, device)
                    fakes = pool.batch(step - phase_start)
                stats = d_step(
                    gen, disc, opt_d, *next(batches), cfg=cfg.gan, lr=cfg.gan.disc_lr,
                    generator=rng, fakes=fakes,
                )  # fmt: skip
            else:
                beta = gumbel_beta(
                    step - phase_start,
                    cfg.gan.gumbel_anneal_steps or phase_size,
                    cfg.gan.gumbel_max_temperature,
                    cfg.gan.gumbel_anneal,
                )
                stats = adversarial_step(
                    gen, disc, opt_g, opt_d, batches, cfg=cfg.gan, g_lr=cfg.gan.g_lr, d_lr=cfg.gan.disc_lr,
                    d_steps=cfg.gan.d_steps, beta=beta, generator=rng, baseline_T=baseline_T,
                    reduce_mean=reduce_mean, world_size=world,
                )  # fmt: skip
                if cfg.gan.estimator == "gumbel":
                    stats["beta"] = beta  # the report plots RelGAN's schedule
        step += 1
        train_s += time.perf_counter() - step_started
        board.scalars(stats, step, phase)
        if ctx.console:
            ctx.console.step(step, (phase, phase_start, phase_size), stats)
        _maybe_fail(cfg, step, rank, world, run_dir)

        phase_ends = phase_of(step, cfg)[0] != phase
        if phase == "d_pretrain" and cfg.schedule.d_pretrain_eval_every:
            due = (step - phase_start) % cfg.schedule.d_pretrain_eval_every == 0
        else:
            due = step % cfg.schedule.eval_every == 0
        if due or phase_ends or step == total:
            last_metrics, reason = _record_evaluation(
                held_out, gen, disc, cfg, step, phase, stats, stopper, board, train_s
            )
            history.append({k: v for k, v in last_metrics.items() if k != "samples"})
            if ctx.console:
                ctx.console.step(step, (phase, phase_start, phase_size), last_metrics, now=True)
            if _broadcast_flag(reason is not None, device):
                stop_reason = reason or "early stop on rank 0"
                step = phase_start + phase_size  # the phase ends here
                board.text("early_stopping", f"step {step}: {stop_reason}", step)
                history[-1]["early_stop"] = stop_reason
                if ctx.console:
                    ctx.console.line(f"early stop of {phase} at step {history[-1]['step']}: {stop_reason}")
                stopper.reset()
        if step % cfg.trainer.checkpoint_every == 0 or step >= total or stop_reason:
            state = {
                "step": step, "batches_consumed": batches.consumed,
                "generator": unwrap(gen).state_dict(), "discriminator": unwrap(disc).state_dict(),
                "opt_mle": opt_mle.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "baseline_T": None if baseline_T is None else baseline_T.cpu(),
                "early_stopping": stopper.state(), "history": json.dumps(history),
                "train_s": train_s,
            }  # fmt: skip
            applied = {"lr_g": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"],
                       "batches_consumed": batches.consumed}  # fmt: skip
            board.sync()
            _checkpoint_and_report(
                ctx, cfg, state, {**last_metrics, **applied}, step, phase, data_dir,
                extra_meta=run.checkpoint_meta,
            )  # fmt: skip
            stop_reason = None
    board.close()
    return {
        "steps": step,
        "wall_s": time.perf_counter() - started,
        "train_s": train_s,
        "final_metrics": {k: v for k, v in last_metrics.items() if k != "samples"},
        "early_stops": [h for h in history if "early_stop" in h],
        "history": history,
        "worker_nodes": worker_nodes,
        "reader": batches.reader,
    }


POOL_STREAM_TAG = 2_000_003  # keeps the pool's random streams apart from the steps'


def _refreshed_pool(pool, gen, cfg: Config, k: int, rank: int, world: int, device) -> FakePool:
    """D pretraining's pool for its k-th step: regenerated at the start of every round of
    d_pretrain_refresh steps (and after a resume), from streams seeded by (seed, round), so a
    resumed or distributed run draws the pool the uninterrupted one-process run draws."""
    s = cfg.schedule
    round_index = k // s.d_pretrain_refresh
    if pool is not None and pool.round_index == round_index:
        return pool
    streams = _streams(cfg, (POOL_STREAM_TAG, round_index), rank, world, device)
    total_streams = cfg.trainer.rng_streams or world
    return FakePool(
        gen, cfg.gan, rows_per_stream=max(s.d_pretrain_pool // total_streams, 1),
        batch_per_stream=s.batch_size // total_streams, streams=streams, round_index=round_index,
    )  # fmt: skip


def eval_seed(cfg: Config) -> int:
    """The seed of the samples every evaluation draws (the same each time: a change in a
    metric between evaluations is G's, not the draw's)."""
    return cfg.schedule.seed + 7


def temperature_curve(data_dir: str, cfg: Config, gen: nn.Module, temperatures) -> list:
    """(NLL_test, NLL_oracle) of `gen` at each temperature, measured as the evaluations of a
    run with `cfg` measure them (the same held-out rows, sample count and seed), so a distance
    to this curve compares like with like."""
    from raygan.core.metrics import nll_oracle, nll_test
    from raygan.data.read import load_oracle, read_split

    n = cfg.schedule.eval_samples
    test_NT, test_len_N = read_split(data_dir, "test")
    oracle = load_oracle(data_dir)
    return [
        (nll_test(gen, test_NT[:n], test_len_N[:n], temperature=t),
         nll_oracle(oracle, gen, num=n, seed=eval_seed(cfg), temperature=t))
        for t in temperatures
    ]  # fmt: skip


def _record_evaluation(held_out, gen, disc, cfg, step, phase, stats, stopper, board, train_s):
    if held_out is None:  # not rank 0: the decision comes by broadcast
        return {}, None
    # D is scored once it has trained (D pretraining or adversarial steps have begun).
    scored_disc = disc if step > cfg.schedule.mle_steps and cfg.gan.estimator != "constant" else None
    metrics = {
        "step": step, "phase": phase, "train_s": train_s,
        **held_out(gen, seed=eval_seed(cfg), disc=scored_disc),
    }  # fmt: skip
    metrics.update({k: v for k, v in stats.items() if k in ("g_loss", "d_loss", "mle_loss")})
    board.scalars({k: v for k, v in metrics.items() if k != "step"}, step, "eval")
    board.text("samples", "\n\n".join(metrics["samples"]), step)
    return metrics, stopper.update(metrics, phase)


def _checkpoint_and_report(ctx, cfg, state, metrics, step, phase, data_dir, extra_meta) -> None:
    reported = {k: v for k, v in metrics.items() if k != "samples"}
    # final: the run's last report (PBT takes no decision on it: raygan.run.tune_space).
    reported.update({"step": step, "phase": phase, "final": step >= cfg.schedule.total_steps})
    if ctx.rank != 0:
        ctx.report(reported, None)
        return
    with tempfile.TemporaryDirectory(prefix="raygan-ckpt-") as tmp:
        directory = save_checkpoint(
            Path(tmp) / "checkpoint", state=state, config=cfg,
            meta={"step": step, "phase": phase, "metrics": reported, "data_dir": str(data_dir),
                  **extra_meta},
            data_dir=data_dir,
        )  # fmt: skip
        ctx.report(dict(reported), str(directory))


def _broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag on every rank; the tensor lives on the training device (NCCL has no CPU)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def _all_gather(value: Any, world: int) -> list[Any]:
    if world == 1 or not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def _maybe_fail(cfg: Config, step: int, rank: int, world: int, run_dir: str | None) -> None:
    """Test hook for failure recovery: the last worker dies hard, once per run directory."""
    if cfg.trainer.fail_at_step != step or rank != world - 1 or not run_dir:
        return
    marker = storage.join(run_dir, ".fail_at_step_fired")
    if storage.is_file(marker):
        return
    storage.write_text(marker, str(step))
    os.kill(os.getpid(), signal.SIGKILL)
