"""The synthetic-oracle benchmark in one process: MLE pretraining, then each adversarial estimator.

    raygan evaluate oracle --oracle-path ../shared/data/seqgan_oracle/target_params.npz
    raygan evaluate oracle --random-oracle --mle-epochs 2 --adv-steps 20 --eval-samples 1000

Every phase is `raygan.run.loop.train_loop`, the loop each Ray Train worker runs, called here in
this process on one CPU worker (no Ray): the corpus is `raygan prepare --oracle`'s (a temporary
directory), each estimator starts from the MLE run's final checkpoint (`init_from`) with its
recipe's GAN settings, at the papers' sizes (vocab 5000, length 20, embed 32, hidden 32, 10,000
training samples, batch 64). NLL_oracle and NLL_test (the held-out oracle samples) after every
phase, with training seconds (evaluations excluded).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from raygan.core.config import Config, ModelConfig
from raygan.core.errors import RayganError
from raygan.core.metrics import d_accuracy_key

# Published NLL_oracle on the SeqGAN oracle (length 20): SeqGAN paper Table 1; RelGAN's table.
PUBLISHED = {"random": 10.310, "MLE": 9.038, "SeqGAN": 8.736, "LeakGAN": 7.038, "RelGAN": 6.680}

# The adversarial settings per estimator: the GAN keys of the paper's shipped recipe
# (raygan/recipes; their schedules and batch sizes are this benchmark's own).
PRESETS: dict[str, str] = {"gumbel": "relgan", "rollout": "seqgan", "dense": "scratchgan"}


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


def _config(bench: OracleBenchmark, data_dir: str, overrides: dict[str, Any]) -> Config:
    from raygan.run.train import resolve_config

    model = {f"model.{k}": getattr(bench.model, k) for k in ("g_embed_dim", "g_hidden_dim",
             "d_embed_dim", "d_hidden_dim", "g_init_std")}  # fmt: skip
    fixed = {"batch_size": bench.batch_size, "eval_samples": bench.eval_samples,
             "seed": bench.seed, "num_workers": 1, "checkpoint_every": 10**9}  # fmt: skip
    return resolve_config(data_dir, {**model, **fixed, **overrides})


def _train(cfg: Config, data_dir: str, run_dir: Path) -> tuple[dict, Path]:
    """train_loop in this process; returns its summary and its final checkpoint (kept in run_dir)."""
    from raygan.run.checkpoint import copy_checkpoint
    from raygan.run.loop import RunSpec, WorkerContext, train_loop

    final = run_dir / "final"

    def keep(metrics: dict, checkpoint: str | None) -> None:
        if checkpoint is not None:
            copy_checkpoint(checkpoint, final)

    summary = train_loop(
        RunSpec(config=cfg, data_dir=data_dir, run_dir=None), WorkerContext(report=keep)
    )
    return summary, final


def _initial(cfg: Config, data_dir: str) -> dict[str, float]:
    """The metrics of the G the MLE run starts from (train_loop's first evaluation is after
    eval_every steps), measured as its evaluations measure."""
    import torch

    from raygan.run.loop import HeldOutMetrics, build_models, eval_seed

    gen = build_models(cfg)[0]
    return _metrics(HeldOutMetrics(data_dir, cfg, torch.device("cpu"))(gen, seed=eval_seed(cfg)))


def _metrics(entry: dict) -> dict[str, float]:
    return {"nll_oracle": entry["nll_oracle"], "nll_test": entry["nll_test"]}


def run_oracle_benchmark(bench: OracleBenchmark, log=print) -> dict:
    from raygan.core.metrics import nll_test
    from raygan.data.prepare import prepare_oracle
    from raygan.data.read import load_oracle, read_split

    result: dict[str, Any] = {"config": _jsonable(bench), "oracle_own_nll": None, "phases": []}
    with tempfile.TemporaryDirectory(prefix="raygan-oracle-") as tmp:
        data_dir = str(Path(tmp) / "data")
        sizes = {} if bench.oracle_path else {"vocab_size": bench.model.vocab_size,
                                              "max_len": bench.model.max_len}  # fmt: skip
        prepare_oracle(
            data_dir, oracle="seqgan" if bench.oracle_path else "random",
            oracle_path=bench.oracle_path, num_samples=bench.num_train, num_test=bench.num_test,
            seed=bench.seed, progress=False, **sizes,
        )  # fmt: skip
        oracle, (test_NT, test_len_N) = load_oracle(data_dir), read_split(data_dir, "test")
        result["oracle_own_nll"] = nll_test(oracle, test_NT, test_len_N)
        log(f"oracle: NLL of its own held-out samples = {result['oracle_own_nll']:.4f}")

        steps_per_epoch = bench.num_train // bench.batch_size
        mle = _config(bench, data_dir, {
            "mle_steps": bench.mle_epochs * steps_per_epoch, "d_pretrain_steps": 0, "adv_steps": 0,
            "eval_every": bench.eval_every_epochs * steps_per_epoch,
        })  # fmt: skip
        result["phases"].append({"phase": "random init", **_initial(mle, data_dir), "wall_s": 0.0,
                                 "steps": 0})  # fmt: skip
        log(_row(result["phases"][-1]))
        summary, pretrained = _train(mle, data_dir, Path(tmp) / "mle")
        phases = [
            {"phase": f"MLE epoch {h['step'] // steps_per_epoch}", **_metrics(h),
             "wall_s": h["train_s"], "steps": h["step"]}
            for h in summary["history"]
        ]  # fmt: skip
        for phase in phases:
            log(_row(phase))
        best = min(phases, key=lambda phase: phase["nll_test"])
        if best is not phases[-1]:
            phases.append({**best, "phase": f"(best NLL_test: {best['phase']})"})
            log(_row(phases[-1]))
        result["phases"] += phases

        for name in bench.estimators:
            cfg = _config(bench, data_dir, {
                "recipe": PRESETS[name], "mle_steps": 0, "d_pretrain_steps": bench.d_pretrain_steps,
                "adv_steps": bench.adv_steps, "eval_every": max(bench.adv_steps, 1),
                "d_pretrain_eval_every": 0, "d_pretrain_pool": 0, "d_pretrain_until_acc": 0.0,
                "init_from": str(pretrained),
            })  # fmt: skip
            summary, _ = _train(cfg, data_dir, Path(tmp) / name)
            last = summary["history"][-1]
            phase = {
                "phase": f"{name} ({bench.adv_steps} G steps)", **_metrics(last),
                "wall_s": summary["train_s"], "steps": bench.adv_steps,
                "s_per_g_step": summary["train_s"] / max(bench.adv_steps, 1),
                "d_heldout_acc": last.get(d_accuracy_key(cfg.gan.loss)),
                "gan": dataclasses.asdict(cfg.gan),
            }  # fmt: skip
            log(_row(phase))
            result["phases"].append(phase)
    return result


def _row(phase: dict) -> str:
    return (
        f"{phase['phase']:<28} NLL_oracle {phase['nll_oracle']:7.3f}  NLL_test {phase['nll_test']:7.3f}"
        f"  train {phase['wall_s']:8.1f} s"
    )


def _jsonable(bench: OracleBenchmark) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(bench), default=str))


def write_result(result: dict, path: str | Path) -> None:
    from raygan.run.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2))
