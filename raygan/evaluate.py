"""The synthetic-oracle benchmark in one process: MLE pretraining, then each adversarial estimator.

    raygan evaluate oracle --oracle-path ../shared/data/seqgan_oracle/target_params.npz
    raygan evaluate oracle --random-oracle --mle-epochs 2 --adv-steps 20 --eval-samples 1000

It runs the same step functions the distributed trainer runs (raygan.gan), at the papers' sizes
(vocab 5000, length 20, embed 32, hidden 32, 10,000 training samples, batch 64), and reports
NLL_oracle and NLL_test (10,000 held-out oracle samples) after every phase, with wall times.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from raygan.config import GANConfig, ModelConfig
from raygan.errors import RayganError
from raygan.gan import adversarial_step, d_step, gumbel_beta, mle_step
from raygan.metrics import nll_oracle, nll_test, sample_tokens
from raygan.models import Discriminator, Generator, Oracle

# Published NLL_oracle on the SeqGAN oracle (length 20): SeqGAN paper Table 1; RelGAN's table.
PUBLISHED = {"random": 10.310, "MLE": 9.038, "SeqGAN": 8.736, "LeakGAN": 7.038, "RelGAN": 6.680}

# The adversarial settings per estimator: the GAN keys of the paper's shipped recipe
# (raygan/recipes; their schedules and batch sizes are this benchmark's own).
PRESETS: dict[str, str] = {"gumbel": "relgan", "rollout": "seqgan", "dense": "scratchgan"}


def preset(estimator: str) -> GANConfig:
    from raygan.config import Config, apply_overrides

    return apply_overrides(Config(), {"recipe": PRESETS[estimator]}).gan


@dataclasses.dataclass
class OracleBenchmark:
    oracle_path: str | None = None
    """SeqGAN oracle .npz; None uses a seeded random oracle of the same size."""
    seed: int = 0
    num_train: int = 10_000
    num_test: int = 10_000
    batch_size: int = 64
    mle_epochs: int = 80
    eval_every_epochs: int = 10
    adv_steps: int = 200
    d_pretrain_steps: int = 100
    estimators: tuple[str, ...] = ("gumbel", "rollout", "dense")
    eval_samples: int = 10_000
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def add_oracle_arguments(parser, *, require_source: bool = True) -> None:
    """The options of `raygan evaluate oracle` (also used by scripts/bench_oracle_core.py)."""
    src = parser.add_mutually_exclusive_group(required=require_source)
    src.add_argument("--oracle-path", help="SeqGAN oracle .npz (target_params.npz)")
    src.add_argument("--random-oracle", action="store_true", help="a seeded random oracle, no file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=10_000, help="oracle samples to train on")
    parser.add_argument("--num-test", type=int, default=10_000, help="held-out oracle samples")
    parser.add_argument("--mle-epochs", type=int, default=80)
    parser.add_argument("--eval-every-epochs", type=int, default=10)
    parser.add_argument(
        "--adv-steps", type=int, default=200, help="adversarial G steps per estimator"
    )
    parser.add_argument("--d-pretrain-steps", type=int, default=100)
    parser.add_argument("--estimators", default="gumbel,rollout,dense", help="comma-separated")
    parser.add_argument("--eval-samples", type=int, default=10_000, help="samples for NLL_oracle")


def benchmark_from_args(args) -> OracleBenchmark:
    estimators = tuple(e for e in args.estimators.split(",") if e)
    unknown = [e for e in estimators if e not in PRESETS]
    if unknown:
        raise RayganError(
            f"--estimators: unknown {', '.join(unknown)}; valid: {', '.join(PRESETS)}"
        )
    for flag in ("num_train", "num_test", "eval_samples", "eval_every_epochs"):
        if getattr(args, flag) <= 0:
            raise RayganError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    return OracleBenchmark(
        oracle_path=args.oracle_path,
        seed=args.seed,
        num_train=args.num_train,
        num_test=args.num_test,
        mle_epochs=args.mle_epochs,
        eval_every_epochs=args.eval_every_epochs,
        adv_steps=args.adv_steps,
        d_pretrain_steps=args.d_pretrain_steps,
        estimators=estimators,
        eval_samples=args.eval_samples,
    )


def _batches(data_NT: torch.Tensor, batch_size: int, seed: int) -> Iterator[tuple]:
    """Endless shuffled batches, a new permutation each epoch; the last partial batch is dropped."""
    rng = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(data_NT.shape[0], generator=rng)
        for start in range(0, data_NT.shape[0] - batch_size + 1, batch_size):
            yield data_NT[order[start : start + batch_size]], None


def _evaluate(oracle, gen, test_NT, num_samples, seed) -> dict[str, float]:
    return {
        "nll_oracle": nll_oracle(oracle, gen, num=num_samples, seed=seed),
        "nll_test": nll_test(gen, test_NT),
    }


def run_oracle_benchmark(bench: OracleBenchmark, log=print) -> dict:
    torch.manual_seed(bench.seed)
    if bench.oracle_path:
        oracle = Oracle.from_seqgan_file(bench.oracle_path)
    else:
        cfg = bench.model
        oracle = Oracle.random(vocab_size=cfg.vocab_size, max_len=cfg.max_len, seed=bench.seed)
    cfg = dataclasses.replace(
        bench.model, vocab_size=oracle.cfg.vocab_size, max_len=oracle.cfg.max_len
    )
    train_NT = sample_tokens(oracle, bench.num_train, seed=bench.seed + 1).tokens_BT
    test_NT = sample_tokens(oracle, bench.num_test, seed=bench.seed + 2).tokens_BT
    evaluate = lambda g: _evaluate(oracle, g, test_NT, bench.eval_samples, bench.seed + 3)  # noqa: E731
    result = {"config": _jsonable(bench), "oracle_own_nll": None, "phases": []}
    result["oracle_own_nll"] = nll_test(oracle, test_NT)
    log(f"oracle: NLL of its own held-out samples = {result['oracle_own_nll']:.4f}")

    gen = Generator(cfg)
    result["phases"].append({"phase": "random init", **evaluate(gen), "wall_s": 0.0, "steps": 0})
    log(_row(result["phases"][-1]))
    gen, mle_phases = _pretrain(gen, train_NT, bench, evaluate, log)
    result["phases"] += mle_phases

    for name in bench.estimators:
        gan_cfg = preset(name)
        result["phases"].append(
            _adversarial(name, gen, cfg, gan_cfg, train_NT, bench, evaluate, log)
        )
    return result


def _pretrain(gen, train_NT, bench, evaluate, log):
    """MLE with SeqGAN's settings (Adam 0.01, clip 5) for a fixed number of epochs, as the papers
    report it; the epoch with the best NLL_test is recorded beside it (the model keeps training)."""
    gan_cfg = GANConfig()
    opt = torch.optim.Adam(gen.parameters(), lr=gan_cfg.mle_lr)
    batches = _batches(train_NT, bench.batch_size, bench.seed + 4)
    steps_per_epoch = bench.num_train // bench.batch_size
    phases, best, start = [], None, time.perf_counter()
    for epoch in range(1, bench.mle_epochs + 1):
        for _ in range(steps_per_epoch):
            tokens_BT, _ = next(batches)
            mle_step(gen, opt, tokens_BT, lr=gan_cfg.mle_lr, grad_clip=gan_cfg.grad_clip)
        if epoch % bench.eval_every_epochs == 0 or epoch == bench.mle_epochs:
            phase = {
                "phase": f"MLE epoch {epoch}",
                **evaluate(gen),
                "wall_s": time.perf_counter() - start,
                "steps": epoch * steps_per_epoch,
            }
            phases.append(phase)
            log(_row(phase))
            if best is None or phase["nll_test"] < best["nll_test"]:
                best = phase
    if best is not None and best is not phases[-1]:
        phases.append({**best, "phase": f"(best NLL_test: {best['phase']})"})
        log(_row(phases[-1]))
    return gen, phases


def _adversarial(name, pretrained, cfg, gan_cfg, train_NT, bench, evaluate, log) -> dict:
    gen, disc = copy.deepcopy(pretrained), Discriminator(cfg)
    opt_g = torch.optim.Adam(gen.parameters(), lr=gan_cfg.g_lr, betas=(gan_cfg.adam_beta1, 0.999))
    opt_d = torch.optim.Adam(
        disc.parameters(), lr=gan_cfg.disc_lr, betas=(gan_cfg.adam_beta1, 0.999)
    )
    batches = _batches(train_NT, bench.batch_size, bench.seed + 5)
    rng = torch.Generator().manual_seed(bench.seed + 6)
    start = time.perf_counter()
    for _ in range(bench.d_pretrain_steps):
        tokens_BT, _ = next(batches)
        d_step(gen, disc, opt_d, tokens_BT, cfg=gan_cfg, lr=gan_cfg.disc_lr, generator=rng)
    baseline_T = torch.full((cfg.max_len,), float("nan")) if gan_cfg.reward_baseline else None
    stats: dict[str, float] = {}
    for step in range(bench.adv_steps):
        beta = gumbel_beta(
            step, gan_cfg.gumbel_anneal_steps or bench.adv_steps, gan_cfg.gumbel_max_temperature, gan_cfg.gumbel_anneal
        )
        stats = adversarial_step(
            gen,
            disc,
            opt_g,
            opt_d,
            batches,
            cfg=gan_cfg,
            g_lr=gan_cfg.g_lr,
            d_lr=gan_cfg.disc_lr,
            d_steps=gan_cfg.d_steps,
            beta=beta,
            generator=rng,
            baseline_T=baseline_T,
        )
    wall = time.perf_counter() - start
    phase = {
        "phase": f"{name} ({bench.adv_steps} G steps)",
        **evaluate(gen),
        "wall_s": wall,
        "steps": bench.adv_steps,
        "s_per_g_step": wall / max(bench.adv_steps, 1),
        "last_stats": stats,
        "gan": dataclasses.asdict(gan_cfg),
    }
    log(_row(phase))
    return phase


def _row(phase: dict) -> str:
    return (
        f"{phase['phase']:<28} NLL_oracle {phase['nll_oracle']:7.3f}  NLL_test {phase['nll_test']:7.3f}"
        f"  wall {phase['wall_s']:8.1f} s"
    )


def _jsonable(bench: OracleBenchmark) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(bench), default=str))


def write_result(result: dict, path: str | Path) -> None:
    from raygan.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2))
