"""Training-speed measurements behind scripts/bench_train.py: plain PyTorch against raygan's
steps in one process, two processes with and without DDP, Ray Train runs, and data ingest.
Every time is a median over interleaved repetitions after warm-up (`interleaved`)."""


from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raygan.core.config import GANConfig, ModelConfig
from raygan.core.gan import adversarial_step, g_step, mle_step
from raygan.core.metrics import nll_oracle
from raygan.core.models import Discriminator, Generator, Oracle
from raygan.core.sampler import SAMPLE_CHUNK_ROWS, sample_categorical
from raygan.data.read import RankBatches, read_split
from raygan.run.events import iter_events
from raygan.run.loop import PHASES
from raygan.run.train import fit  # imported up front: one snapshot of raygan for the whole run

PEER_ROLLOUT_G_STEP_S = 49.0  # TextGAN-PyTorch, SeqGAN G step with 16 rollouts, on this CPU model
PEER_NLL_ORACLE_S = 34.0  # TextGAN-PyTorch, NLL_oracle of 10,000 samples, on this CPU model
BIG = 10**6  # eval_every / checkpoint_every that never fire inside a phase


@dataclasses.dataclass(frozen=True)
class Sizes:
    vocab: int = 5000
    max_len: int = 20
    g_dim: int = 32  # G embed = hidden (ModelConfig defaults)
    d_dim: int = 64  # D embed = hidden (ModelConfig defaults)
    batch: int = 64
    rollout_num: int = 16
    d_dropout: float = 0.25
    num_train: int = 10_000  # prepared corpus; an MLE epoch is num_train // batch steps
    num_test: int = 1_000
    nll_samples: int = 10_000
    cat_rows: int = 2000  # sample_categorical vs multinomial on (cat_rows, vocab) logits
    warmup: int = 2
    reps: int = 5  # fast steps (MLE is timed per step over whole epochs instead)
    rollout_reps: int = 2
    epoch_reps: int = 2
    cat_reps: int = 20
    ray_mle_steps: int = 80
    ray_adv_steps: int = 16
    pair_steps: int = 40  # MLE steps per process in the two-process check (Gumbel: / 5)
    eval_samples: int = 100
    profile: bool = True


FULL = Sizes()
SMOKE = Sizes(
    vocab=50, max_len=8, g_dim=8, d_dim=8, batch=8, rollout_num=2, num_train=160, num_test=32,
    nll_samples=200, cat_rows=64, warmup=1, reps=2, rollout_reps=1, epoch_reps=1, cat_reps=3,
    ray_mle_steps=6, ray_adv_steps=4, pair_steps=3, eval_samples=16,
)  # fmt: skip


# -- timing -------------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, reps: int) -> dict:
    """Run the functions round-robin (warm-up rounds first) so drift on a noisy machine hits all
    of them alike; returns {name: {"median_s", "times_s"}}."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + reps):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: {"median_s": statistics.median(t), "times_s": t} for name, t in times.items()}


def other_threads() -> int:
    """1 when the benchmark runs multi-threaded, else 2 (the torch default on this machine)."""
    return 1 if torch.get_num_threads() > 1 else 2


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tokens_per_s(batch: int, max_len: int, seconds: float) -> float:
    return batch * max_len / seconds


# -- 1. the plain loop --------------------------------------------------------------------------
class PlainLM(nn.Module):
    """nn.Embedding -> nn.LSTM -> nn.Linear; an LSTMCell view of the same weights for rollouts."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)

    def forward(self, tokens_BT: torch.Tensor) -> torch.Tensor:
        inputs_BT = F.pad(tokens_BT[:, :-1], (1, 0))  # start token 0
        return self.head(self.lstm(self.embed(inputs_BT))[0])  # (B, T, V)

    def gumbel_rollout(self, num: int, max_len: int, beta: float) -> torch.Tensor:
        """(B, T, V) soft one-hots; the argmax of the perturbed logits is fed back."""
        tokens_B, state, soft = torch.zeros(num, dtype=torch.long), None, []
        for _ in range(max_len):
            out_B1H, state = self.lstm(self.embed(tokens_B)[:, None], state)
            logits_BV = self.head(out_B1H[:, 0])
            u_BV = torch.rand_like(logits_BV)
            perturbed_BV = logits_BV - torch.log(-torch.log(u_BV + 1e-10) + 1e-10)
            tokens_B = perturbed_BV.argmax(-1)
            soft.append(F.softmax(beta * perturbed_BV, dim=-1))
        return torch.stack(soft, 1)


class PlainD(nn.Module):
    """Soft one-hots @ embedding -> LSTM -> one logit per sequence."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.embed, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, 1)
        self.lstm = nn.LSTM(dim, dim, batch_first=True)

    def forward(self, soft_BTV: torch.Tensor) -> torch.Tensor:
        out_BTH, _ = self.lstm(soft_BTV @ self.embed.weight)
        return self.head(out_BTH[:, -1])[:, 0]


def _plain_update(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()


def plain_mle_step(lm: PlainLM, opt, tokens_BT: torch.Tensor) -> None:
    logits_BTV = lm(tokens_BT)
    _plain_update(lm, opt, F.cross_entropy(logits_BTV.flatten(0, 1), tokens_BT.flatten()))


def plain_gumbel_step(lm: PlainLM, disc: PlainD, opt_g, opt_d, real_BT, beta: float = 1.0) -> None:
    """One D update (BCE, real one-hots vs a no-grad rollout), then one G update through D."""
    B, T = real_BT.shape
    with torch.no_grad():
        fake_BTV = lm.gumbel_rollout(B, T, beta)
    real_BTV = F.one_hot(real_BT, fake_BTV.shape[-1]).float()
    labels_2B = torch.cat([torch.ones(B), torch.zeros(B)])
    d_logits_2B = disc(torch.cat([real_BTV, fake_BTV]))
    _plain_update(disc, opt_d, F.binary_cross_entropy_with_logits(d_logits_2B, labels_2B))
    g_logits_B = disc(lm.gumbel_rollout(B, T, beta))
    _plain_update(lm, opt_g, F.binary_cross_entropy_with_logits(g_logits_B, torch.ones(B)))


def model_config(s: Sizes) -> ModelConfig:
    return ModelConfig(
        vocab_size=s.vocab, max_len=s.max_len, g_embed_dim=s.g_dim, g_hidden_dim=s.g_dim,
        d_embed_dim=s.d_dim, d_hidden_dim=s.d_dim, d_dropout=s.d_dropout,
    )  # fmt: skip


def _step_loop(s: Sizes, kind: str, batch: int, steps: int, barrier, queue, ddp=None) -> None:
    """A spawned process: `steps` raygan MLE or Gumbel adversarial steps at 1 thread, timed once
    every process is ready; `ddp=(rank, world, port)` wraps G and D in gloo DDP first, as
    raygan.run.train.prepare_ddp does on a Ray Train worker."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen, disc = Generator(model_config(s)), Discriminator(model_config(s))
    if ddp is not None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        rank, world, port = ddp
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        gen = DistributedDataParallel(gen, gradient_as_bucket_view=True)
        disc = DistributedDataParallel(disc, gradient_as_bucket_view=True)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-2)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4)
    tokens_BT = torch.randint(0, s.vocab, (batch, s.max_len))
    if kind == "mle":
        step = lambda: mle_step(gen, opt_g, tokens_BT, lr=1e-2, grad_clip=5.0)  # noqa: E731
    else:
        cfg, real = GANConfig(estimator="gumbel", d_steps=1), itertools.repeat((tokens_BT, None))
        rng = torch.Generator().manual_seed(0)
        step = lambda: adversarial_step(  # noqa: E731
            gen, disc, opt_g, opt_d, real, cfg=cfg, g_lr=1e-4, d_lr=1e-4, d_steps=1, beta=1.0,
            generator=rng,
        )  # fmt: skip
    for _ in range(2):
        step()
    barrier.wait()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    queue.put((time.perf_counter() - started) / steps)
    if ddp is not None:
        torch.distributed.destroy_process_group()


def bench_two_processes(s: Sizes, rounds: int = 3) -> dict:
    """What this machine gives two processes, without Ray: raygan's step alone at batch B, then
    two independent copies at once with batch B each (as 2 workers of B rows each) and with B/2
    each (as 2 workers sharing a batch of B), for the MLE and the Gumbel step. Tokens/s of the
    pair over tokens/s alone is the most any 2-worker data-parallel run can gain here. `ddp`:
    the pair of B rows each under gloo DDP (what the gradient all-reduce and the lock-step
    cost). Medians over `rounds`, the setups interleaved."""
    from raygan.run.ray_env import free_port

    ctx = multiprocessing.get_context("spawn")
    setups = {
        "alone": (1, s.batch, False),
        "pair": (2, s.batch, False),
        "pair_half": (2, s.batch // 2, False),
        "ddp": (2, s.batch, True),
    }
    out = {}
    for kind, steps in (("mle", s.pair_steps), ("gumbel", max(1, s.pair_steps // 5))):
        tokens_s: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(rounds):
            for name, (procs, batch, ddp) in setups.items():
                queue, barrier, port = ctx.Queue(), ctx.Barrier(procs), free_port()
                workers = [
                    ctx.Process(
                        target=_step_loop,
                        args=(s, kind, batch, steps, barrier, queue),
                        kwargs={"ddp": (rank, procs, port) if ddp else None},
                    )
                    for rank in range(procs)
                ]
                for w in workers:
                    w.start()
                step_s = [queue.get(timeout=600) for _ in workers]
                for w in workers:
                    w.join()
                tokens_s[name].append(sum(batch * s.max_len / t for t in step_s))
        alone = statistics.median(tokens_s["alone"])
        out[kind] = {
            "steps": steps,
            "tokens_per_s": tokens_s,
            "pair_vs_alone": statistics.median(tokens_s["pair"]) / alone,
            "pair_half_vs_alone": statistics.median(tokens_s["pair_half"]) / alone,
            "ddp_vs_alone": statistics.median(tokens_s["ddp"]) / alone,
        }
    return out


# -- 2. raygan steps in one process --------------------------------------------------------------
@dataclasses.dataclass
class Bench:
    """Everything one process needs: sizes, the corpus batches, plain and raygan models."""

    sizes: Sizes
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    model_cfg: ModelConfig

    def __post_init__(self) -> None:
        s = self.sizes
        torch.manual_seed(0)
        self.plain_g, self.plain_d = PlainLM(s.vocab, s.g_dim), PlainD(s.vocab, s.d_dim)
        self.plain_opt_g = torch.optim.Adam(self.plain_g.parameters(), lr=1e-2)
        self.plain_opt_d = torch.optim.Adam(self.plain_d.parameters(), lr=1e-4)
        self.gen, self.disc = Generator(self.model_cfg), Discriminator(self.model_cfg)
        self.opt_mle = torch.optim.Adam(self.gen.parameters(), lr=1e-2)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=1e-4)
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=1e-4)
        self.real = itertools.cycle(self.batches)
        self.rng = torch.Generator().manual_seed(0)

    def raygan_mle(self, batch) -> None:
        mle_step(self.gen, self.opt_mle, *batch, lr=1e-2, grad_clip=5.0)

    def raygan_adv(self, estimator: str) -> Callable[[], object]:
        cfg = GANConfig(estimator=estimator, rollout_num=self.sizes.rollout_num, d_steps=1)
        baseline_T = torch.zeros(self.sizes.max_len) if estimator == "dense" else None
        return lambda: adversarial_step(
            self.gen, self.disc, self.opt_g, self.opt_d, self.real, cfg=cfg, g_lr=1e-4,
            d_lr=1e-4, d_steps=1, beta=1.0, generator=self.rng, baseline_T=baseline_T,
        )  # fmt: skip

    def raygan_rollout_g_step(self) -> None:
        cfg = GANConfig(estimator="rollout", rollout_num=self.sizes.rollout_num)
        tokens_BT, lengths_B = next(self.real)
        g_step(self.gen, self.disc, self.opt_g, tokens_BT, lengths_B, cfg=cfg, lr=1e-4,
               generator=self.rng)  # fmt: skip

    def plain_gumbel(self) -> None:
        tokens_BT, _ = next(self.real)
        plain_gumbel_step(self.plain_g, self.plain_d, self.plain_opt_g, self.plain_opt_d, tokens_BT)


def bench_mle_epochs(b: Bench) -> dict:
    """Plain vs raygan MLE over whole epochs, interleaved step by step on the same batch (order
    alternating) so that load drift hits both alike; an epoch's time is the sum of its steps."""
    s = b.sizes
    epoch = b.batches[: s.num_train // s.batch]
    steps = {
        "plain": lambda batch: plain_mle_step(b.plain_g, b.plain_opt_g, batch[0]),
        "raygan": b.raygan_mle,
    }
    for batch in epoch[: 3 * s.warmup]:  # warm-up steps, not recorded
        for step in steps.values():
            step(batch)
    times = {kind: [[] for _ in range(s.epoch_reps)] for kind in steps}
    for rep, (i, batch) in itertools.product(range(s.epoch_reps), enumerate(epoch)):
        for kind in sorted(steps, reverse=bool(i % 2)):
            started = time.perf_counter()
            steps[kind](batch)
            times[kind][rep].append(time.perf_counter() - started)
    totals = {kind: [sum(rep) for rep in reps] for kind, reps in times.items()}
    return {
        "mle_epoch": {
            "steps": len(epoch),
            **{k: {"median_s": statistics.median(t), "times_s": t} for k, t in totals.items()},
        },
        "mle_step": {
            kind: {
                "median_s": statistics.median([t for rep in reps for t in rep]),
                "steps_timed": len(epoch) * len(reps),
            }
            for kind, reps in times.items()
        },
    }


def bench_steps(b: Bench) -> dict:
    """Sections 1-2: MLE over whole epochs (per step and per epoch), the adversarial steps."""
    s, out = b.sizes, bench_mle_epochs(b)
    epochs = {k: v["median_s"] for k, v in out["mle_epoch"].items() if k != "steps"}
    print(f"  MLE epoch: {json.dumps(epochs)}", flush=True)

    out["gumbel_step"] = interleaved(
        {"plain": b.plain_gumbel, "raygan": b.raygan_adv("gumbel")}, warmup=s.warmup, reps=s.reps
    )
    out["dense_step"] = interleaved({"raygan": b.raygan_adv("dense")}, warmup=s.warmup, reps=s.reps)
    print("  gumbel and dense done", flush=True)
    alt = other_threads()
    with torch_threads(alt):  # the same two steps at the other thread count, for comparison
        batch = b.batches[0]
        mle = interleaved({"mle": lambda: b.raygan_mle(batch)}, warmup=s.warmup, reps=2 * s.reps)
        gumbel = interleaved({"gumbel": b.raygan_adv("gumbel")}, warmup=1, reps=s.reps // 2 + 1)
        out["other_threads"] = {"threads": alt, **mle, **gumbel}
    print(f"  {alt} threads done", flush=True)
    out["rollout_step"] = interleaved(
        {"raygan": b.raygan_adv("rollout")}, warmup=1, reps=s.rollout_reps
    )
    out["rollout_g_step"] = interleaved(
        {"raygan": b.raygan_rollout_g_step}, warmup=0, reps=s.rollout_reps
    )
    print(f"  rollout g_step {out['rollout_g_step']['raygan']['median_s']:.2f} s", flush=True)
    return out


def bench_nll_and_sampler(b: Bench, oracle: Oracle) -> dict:
    s = b.sizes
    values: list[float] = []  # G is untrained here: the value is near the random-G level
    score = lambda: values.append(nll_oracle(oracle, b.gen, num=s.nll_samples))  # noqa: E731
    nll = interleaved({"nll_oracle": score}, warmup=0, reps=3)["nll_oracle"]  # ~20 s each
    nll["values"] = values
    logits_BV = torch.randn(s.cat_rows, s.vocab, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    sampler = interleaved(
        {
            "sample_categorical": lambda: sample_categorical(logits_BV, gen),
            "multinomial": lambda: torch.multinomial(logits_BV.softmax(-1), 1, generator=gen),
        },
        warmup=3, reps=s.cat_reps,
    )  # fmt: skip
    return {"nll_oracle": nll, "sampler": {"rows": s.cat_rows, "vocab": s.vocab, **sampler}}


def bench_floor(b: Bench, reps: int = 5) -> dict:
    """The arithmetic no softmax sampler can skip, timed on this CPU, and the floors it sets.

    Per sampled or scored row: the vocab projection (addmm of SAMPLE_CHUNK_ROWS rows, the
    fastest chunk here) and one exp per logit (an exact categorical draw, like a log-softmax,
    needs the normaliser sum(exp(logits)) over the whole vocabulary); per sequence D scores, D's
    forward pass. A floor is these counts times these rates: the LSTM steps, cumsum, search, the
    policy-gradient backward and all Python are left out, so no real step reaches it.
    """
    s, T, M, B = b.sizes, b.sizes.max_len, b.sizes.rollout_num, b.sizes.batch
    rng = torch.Generator().manual_seed(3)
    rows, seqs = SAMPLE_CHUNK_ROWS, 1024
    h_RH = torch.randn(rows, s.g_dim, generator=rng)
    w_HV, bias_V = torch.randn(s.g_dim, s.vocab, generator=rng), torch.randn(s.vocab)
    logits_RV, out_RV = torch.randn(rows, s.vocab, generator=rng), torch.empty(rows, s.vocab)
    tokens_ST = torch.randint(0, s.vocab, (seqs, T), generator=rng)
    calls = max(1, 20_000 // rows)  # ~20,000 rows per timing

    def project() -> None:
        for _ in range(calls):
            torch.addmm(bias_V, h_RH, w_HV, out=out_RV)

    def exp() -> None:
        for _ in range(calls):
            torch.exp(logits_RV, out=out_RV)

    def d_forward() -> None:
        with torch.no_grad():
            b.disc(tokens_ST)

    t = interleaved({"project": project, "exp": exp, "d_forward": d_forward}, warmup=1, reps=reps)
    per_row = (t["project"]["median_s"] + t["exp"]["median_s"]) / (calls * rows)
    per_seq = t["d_forward"]["median_s"] / seqs
    # a rollout g_step samples B sequences, then M completions of every proper prefix (prefix t
    # samples T - t tokens), and D scores every completion and the B sequences themselves
    rollout_rows = B * T + M * B * T * (T - 1) // 2
    rollout_seqs = M * B * (T - 1) + B
    nll_rows = 2 * s.nll_samples * T  # G samples every token, the oracle scores every token
    return {
        "project_us_per_row": t["project"]["median_s"] / (calls * rows) * 1e6,
        "project_gflops": 2 * s.g_dim * s.vocab * calls * rows / t["project"]["median_s"] / 1e9,
        "exp_us_per_row": t["exp"]["median_s"] / (calls * rows) * 1e6,
        "d_forward_us_per_seq": per_seq * 1e6,
        "rollout_g_step": {"rows": rollout_rows, "d_seqs": rollout_seqs,
                           "floor_s": rollout_rows * per_row + rollout_seqs * per_seq},
        "nll_oracle": {"rows": nll_rows, "floor_s": nll_rows * per_row},
        "times": t,
    }  # fmt: skip


def profile_rollout_g_step(b: Bench, top: int = 8) -> dict:
    """torch.profiler over one rollout g_step: the ops with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        b.raygan_rollout_g_step()
        wall = time.perf_counter() - started
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    ops = [
        {
            "op": e.key,
            "self_cpu_s": e.self_cpu_time_total / 1e6,
            "share": e.self_cpu_time_total / total_us,
            "calls": e.count,
        }
        for e in events[:top]
    ]
    return {"wall_s_profiled": wall, "self_cpu_total_s": total_us / 1e6, "top_ops": ops}


# -- 3. Ray Train -------------------------------------------------------------------------------
def read_tb_scalars(tb_dir: Path) -> list[tuple[float, int, str]]:
    """(wall_time, step, tag) of every scalar in the TensorBoard event files under `tb_dir`."""
    return [(e.wall_time, e.step, v.tag) for e in iter_events(tb_dir) for v in e.summary.value]


def phase_step_times(tb_dir: Path) -> dict:
    """Per-phase step times from the wall-clock stamps rank 0 writes after every step.

    The gap between consecutive steps of one phase is one step (data, step, TensorBoard write);
    gaps across a phase boundary hold the evaluation and are left out."""
    first: dict[tuple[str, int], float] = {}
    for wall, step, tag in read_tb_scalars(tb_dir):
        phase = tag.split("/", 1)[0]
        if phase in PHASES:  # not eval/, samples, early_stopping
            first[(phase, step)] = min(wall, first.get((phase, step), wall))
    out = {}
    for phase in sorted({p for p, _ in first}):
        stamps = sorted(w for (p, _), w in first.items() if p == phase)
        steps = sorted(st for (p, st) in first if p == phase)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        out[phase] = {
            "steps": len(steps),
            "gaps_timed": len(gaps),
            "median_s": statistics.median(gaps) if gaps else float("nan"),
            "mean_s": statistics.fmean(gaps) if gaps else float("nan"),
            "first_step": steps[0],
            "last_step": steps[-1],
        }
    return out


def run_fit(data_dir: str, work: Path, s: Sizes, num_workers: int, batch: int) -> dict:
    """One `fit` with `batch` rows per step over all workers; per-phase step times."""
    run_dir = work / f"run-{num_workers}w-{batch}"
    overrides = {
        "num_workers": num_workers, "batch_size": batch, "mle_steps": s.ray_mle_steps,
        "d_pretrain_steps": 0, "adv_steps": s.ray_adv_steps, "estimator": "gumbel", "d_steps": 1,
        "eval_every": BIG, "checkpoint_every": BIG, "eval_samples": s.eval_samples,
        "g_embed_dim": s.g_dim, "g_hidden_dim": s.g_dim, "d_embed_dim": s.d_dim,
        "d_hidden_dim": s.d_dim, "rollout_num": s.rollout_num,
    }  # fmt: skip
    started = time.perf_counter()
    summary = fit(data_dir, str(run_dir), overrides, fresh=True, log=lambda *_: None,
                  progress=False, report=False)
    fit_wall = time.perf_counter() - started
    steps = summary["steps"]
    phases = phase_step_times(run_dir / "tb")
    timed = sum(p["mean_s"] * p["gaps_timed"] for p in phases.values())
    return {
        "num_workers": num_workers,
        "batch": batch,
        "overrides": overrides,
        "fit_wall_s": fit_wall,
        "loop_wall_s": summary["wall_s"],
        "startup_s": fit_wall - summary["wall_s"],
        "steps": steps,
        "loop_wall_per_step_s": summary["wall_s"] / steps,
        "phases": phases,
        "loop_untimed_s": summary["wall_s"] - timed,
        "worker_nodes": summary.get("worker_nodes"),
    }


def worker_threads() -> int:
    """torch threads inside a 1-CPU Ray actor (Ray sets OMP_NUM_THREADS from its CPUs)."""
    import ray

    @ray.remote(num_cpus=1)
    class Probe:
        def threads(self) -> int:
            import torch

            return torch.get_num_threads()

    probe = Probe.remote()
    try:
        return ray.get(probe.threads.remote())
    finally:
        ray.kill(probe)


def bench_ray(data_dir: str, work: Path, s: Sizes) -> dict:
    """1 worker on a local 2-CPU Ray (plus Ray Data), then 2 workers on 2 single-CPU nodes, with
    the batch split between them and with a whole batch each."""
    import ray
    from ray.cluster_utils import Cluster

    out: dict = {}
    started = time.perf_counter()
    ray.init(num_cpus=2, log_to_driver=False)
    try:
        out["ray_init_s"] = time.perf_counter() - started
        out["worker_torch_threads"] = worker_threads()
        out["one_worker"] = run_fit(data_dir, work, s, 1, s.batch)
        print(f"  1 worker: {_fit_line(out['one_worker'])}", flush=True)
        out["ray_data"] = bench_ray_data(data_dir, s)
    finally:
        ray.shutdown()

    cluster = None
    started = time.perf_counter()
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        out["cluster_start_s"] = time.perf_counter() - started
        out["two_workers"] = run_fit(data_dir, work, s, 2, s.batch)
        print(f"  2 workers, {s.batch // 2} rows each: {_fit_line(out['two_workers'])}", flush=True)
        out["two_workers_full"] = run_fit(data_dir, work, s, 2, 2 * s.batch)
        print(f"  2 workers, {s.batch} rows each: {_fit_line(out['two_workers_full'])}", flush=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return out


def _fit_line(r: dict) -> str:
    per_phase = ", ".join(f"{k} {v['median_s']:.3f} s/step" for k, v in r["phases"].items())
    return f"start-up {r['startup_s']:.1f} s, loop {r['loop_wall_s']:.1f} s, {per_phase}"


# -- 4. data ingest -----------------------------------------------------------------------------
def bench_rank_batches(data_dir: str, s: Sizes) -> dict:
    started = time.perf_counter()
    batches = RankBatches(data_dir, batch_size_per_rank=s.batch // 2, rank=0, world_size=2, seed=0)
    load_s = time.perf_counter() - started
    epochs = []
    for epoch in range(3):
        started, rows = time.perf_counter(), 0
        for tokens_BT, _ in batches.iter_epoch(epoch):
            rows += tokens_BT.shape[0]
        epochs.append({"rows": rows, "s": time.perf_counter() - started})
    rates = [e["rows"] / e["s"] for e in epochs]
    return {
        "rank": 0, "world_size": 2, "batch_size_per_rank": s.batch // 2, "load_s": load_s,
        "epochs": epochs, "rows_per_s": statistics.median(rates),
        "rows_per_s_first_epoch_with_load": epochs[0]["rows"] / (epochs[0]["s"] + load_s),
    }  # fmt: skip


def pad_rows(tokens_N, max_len: int, pad_id: int = 0) -> torch.Tensor:
    """Ray Data's numpy batch of variable-length lists -> (N, T) int64, padded."""
    out_NT = np.full((len(tokens_N), max_len), pad_id, dtype=np.int64)
    for i, row in enumerate(tokens_N):
        out_NT[i, : len(row)] = row
    return torch.from_numpy(out_NT)


def bench_ray_data(data_dir: str, s: Sizes) -> dict:
    """read_parquet(train shards) -> iter_batches(numpy) -> pad: first batch and rows/s."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    files = sorted(str(p) for p in Path(data_dir).glob("train-*.parquet"))
    started = time.perf_counter()
    ds = ray.data.read_parquet(files)  # tokens, length: the only columns
    first_s, rows = None, 0
    for batch in ds.iter_batches(batch_size=s.batch, batch_format="numpy"):
        tokens_BT = pad_rows(batch["tokens"], s.max_len)
        rows += tokens_BT.shape[0]
        if first_s is None:
            first_s = time.perf_counter() - started
    total_s = time.perf_counter() - started
    return {
        "files": len(files), "rows": rows, "first_batch_s": first_s, "total_s": total_s,
        "rows_per_s": rows / total_s,
        "rows_per_s_after_first": (rows - s.batch) / max(total_s - first_s, 1e-9),
    }  # fmt: skip


def corpus_batches(data_dir: str, s: Sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    tokens_NT, lengths_N = read_split(data_dir, "train")
    n = len(tokens_NT) // s.batch * s.batch
    return list(zip(tokens_NT[:n].split(s.batch), lengths_N[:n].split(s.batch), strict=True))
