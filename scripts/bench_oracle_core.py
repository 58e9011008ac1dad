"""Oracle benchmark in one process (no Ray; raygan.run.loop.train_loop): MLE, then each estimator;
JSON + a BENCHMARKS.md table.

    python scripts/bench_oracle_core.py --oracle-path ../shared/data/seqgan_oracle/target_params.npz \
        --markdown BENCHMARKS.md
    python scripts/bench_oracle_core.py --from-json benchmarks/oracle_core.json --markdown BENCHMARKS.md
    python scripts/bench_oracle_core.py --smoke-test                             # tiny, ~1 minute
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raygan.bench.harness import Benchmark, machine_line, main  # noqa: E402
from raygan.bench.markdown import markdown_table  # noqa: E402
from raygan.core.malloc import keep_freed_memory  # noqa: E402
from raygan.run.oracle_benchmark import (  # noqa: E402
    PUBLISHED,
    OracleBenchmark,
    add_oracle_arguments,
    benchmark_from_args,
    run_oracle_benchmark,
)


def oracle_section(result: dict) -> str:
    cfg = result["config"]
    rows = [
        [p["phase"], p["nll_oracle"], p["nll_test"], f"{p['wall_s']:.0f}"] for p in result["phases"]
    ]
    published = ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
    oracle = "SeqGAN oracle" if cfg["oracle_path"] else f"random oracle (seed {cfg['seed']})"
    return "\n".join(
        [
            f"Oracle: {oracle}; {cfg['num_train']:,} training samples, NLL_test on {cfg['num_test']:,} "
            f"held-out oracle samples, NLL_oracle on {cfg['eval_samples']:,} samples at temperature 1, "
            f"batch {cfg['batch_size']}. The oracle scores its own held-out samples at "
            f"{result['oracle_own_nll']:.4f}.",
            "",
            markdown_table(["phase", "NLL_oracle", "NLL_test", "train s (phase)"], rows),
            "",
            f"Published NLL_oracle on this oracle: {published} (SeqGAN paper Table 1; RelGAN's "
            "table). Training seconds exclude evaluations; MLE's are cumulative, each adversarial row "
            "counts its own phase (D pretraining included). Every phase is raygan.run.loop.train_loop "
            "in one process; each estimator starts from the last MLE epoch with its recipe's GAN "
            "settings.",
            "",
            f"Command: `{result['command']}` ({_machine(result['machine'])}, {result['finished']}).",
        ]
    )


def _machine(machine) -> str:
    return machine if isinstance(machine, str) else machine_line(machine)  # older JSON: a line


def measure(args: argparse.Namespace) -> dict:
    keep_freed_memory()  # G steps and samples in this process: see raygan.core.malloc
    bench = benchmark_from_args(args)
    if args.smoke_test:
        from raygan.core.config import ModelConfig

        bench = OracleBenchmark(
            num_train=512, num_test=256, batch_size=32, mle_epochs=2, eval_every_epochs=1,
            adv_steps=3, d_pretrain_steps=2, eval_samples=256,
            model=ModelConfig(vocab_size=50, max_len=8, g_embed_dim=16, g_hidden_dim=16),
        )  # fmt: skip
    return run_oracle_benchmark(bench)


BENCH = Benchmark(
    section="oracle-core", default_json="benchmarks/oracle_core.json", measure=measure,
    render=oracle_section, add_arguments=lambda p: add_oracle_arguments(p, require_source=False),
)  # fmt: skip

if __name__ == "__main__":
    sys.exit(main(BENCH, __doc__.split("\n")[0]))
