"""Rollout rewards of a log_ratio D (`nce`, `nce_mix`): scored while drawn vs teacher-forced.

    python scripts/bench_rollout.py --markdown BENCHMARKS.md     # ~5 minutes on 2 CPUs
    python scripts/bench_rollout.py --smoke-test                 # tiny sizes, checks the script

A log_ratio D's logit on a sequence is sum_t log phi(x_t | x_<t) - log G(x_t | x_<t), so the
rollout reward of a completion is its prefix's log-likelihoods plus its tail's. `rollout_rewards`
reads each prefix once and sums each tail's log-likelihoods under G and every expert of phi
while the tail is drawn (`LogRatioDiscriminator.rollout_logits`); the reference draws the same
completions (`rollout_completions`, the same random streams) and teacher-forces every one
through D's forward, which runs G and each expert over the whole sequence again. Both give the
same rewards to float rounding; the script fails if they differ by more than 1e-3.

Sizes: the recipes' (batch 64, 4 rollouts, G and phi 32/32) at SeqGAN oracle shape (vocab
5,000, length 20) and COCO captions shape (vocab 4,662, length 40, EOS), phi one language model
(`nce`) or a mixture of two (`nce_mix`). G and phi are freshly initialised: neither path's cost
depends on their weights (every rollout is drawn to full length, finished rows padded). Each
time is the median of interleaved repetitions after a warm-up round, in one process at torch's
thread count (--threads, default 1 as in a Ray Train worker).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from raygan.bench.harness import Benchmark, machine_line, main  # noqa: E402
from raygan.bench.train_speed import interleaved  # noqa: E402
from raygan.core.config import ModelConfig  # noqa: E402
from raygan.core.gan import rollout_rewards  # noqa: E402
from raygan.core.models import Generator, make_discriminator  # noqa: E402
from raygan.core.sampler import lengths_from_tokens  # noqa: E402

TOL = 1e-3  # float32 sums of 20-40 log-probabilities of ~-8 each, rounded in another order
SHAPES = {"oracle": (5000, 20, None), "coco": (4662, 40, 2)}  # vocab, length, eos_id
SMOKE_SHAPES = {"oracle": (50, 6, None), "coco": (40, 8, 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=64, help="samples per G step")
    parser.add_argument("--rollouts", type=int, default=4, help="completions per prefix")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per path")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")


def reference_logits(gen, disc, samples, num_rollouts: int, seed: int) -> tuple:
    """D's forward on every completion `rollout_completions` draws, and on the samples."""
    completions = gen.rollout_completions(
        samples.tokens_BT, num_rollouts, z_BZ=samples.z_BZ,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    flat_RT = completions.reshape(-1, samples.tokens_BT.shape[1])
    with torch.no_grad():
        seq_R = disc(flat_RT, lengths_from_tokens(flat_RT, gen.cfg.eos_id))[1]
        full_B = disc(samples.tokens_BT, samples.lengths_B)[1]
    seq_TmB = seq_R.view(-1, num_rollouts, samples.tokens_BT.shape[0]).mean(1)
    return torch.cat([seq_TmB.T, full_B[:, None]], dim=1)


def bench_case(shape: str, experts: int, args, shapes) -> dict:
    vocab, length, eos = shapes[shape]
    cfg = ModelConfig(
        vocab_size=vocab, max_len=length, d_embed_dim=32, d_hidden_dim=32, d_form="log_ratio",
        d_experts=experts, eos_id=eos, pad_id=None if eos is None else 0,
    )  # fmt: skip
    torch.manual_seed(0)
    gen = Generator(cfg)
    disc = make_discriminator(cfg, gen)
    samples = gen.sample(args.batch, generator=torch.Generator().manual_seed(1))
    paths = {
        "teacher_forced": lambda: reference_logits(gen, disc, samples, args.rollouts, 2),
        "streamed": lambda: rollout_rewards(
            gen, disc, samples, args.rollouts, generator=torch.Generator().manual_seed(2),
            reward="logit",
        ),
    }  # fmt: skip
    values: dict[str, torch.Tensor] = {}  # each path's rewards from its last call

    def call(name: str) -> None:
        values[name] = paths[name]()

    timed = interleaved({n: functools.partial(call, n) for n in paths}, warmup=1, reps=args.reps)
    times = {name: t["times_s"] for name, t in timed.items()}
    med = {name: t["median_s"] for name, t in timed.items()}
    diff = (values["streamed"] - values["teacher_forced"]).abs().max().item()
    row = {
        "shape": shape, "vocab": vocab, "length": length, "experts": experts,
        "completions": (length - 1) * args.rollouts * args.batch,
        "teacher_forced_s": med["teacher_forced"], "streamed_s": med["streamed"],
        "speedup": med["teacher_forced"] / med["streamed"], "max_abs_diff": diff,
        "times_s": times,
    }  # fmt: skip
    print(f"  {shape} K={experts}: teacher-forced {med['teacher_forced']:.2f} s, streamed "
          f"{med['streamed']:.2f} s ({row['speedup']:.1f}x), max diff {diff:.1e}", flush=True)  # fmt: skip
    return row


def measure(args: argparse.Namespace) -> dict:
    shapes = SMOKE_SHAPES if args.smoke_test else SHAPES
    if args.smoke_test:
        args.batch, args.rollouts, args.reps = 4, 2, 1
    torch.set_num_threads(args.threads)
    rows = [bench_case(shape, k, args, shapes) for shape in shapes for k in (1, 2)]
    return {
        "batch": args.batch, "rollouts": args.rollouts, "reps": args.reps,
        "threads": args.threads, "rows": rows, "machine_line": machine_line(),
    }  # fmt: skip


def render(result: dict) -> str:
    lines = [
        "| shape | phi | completions scored | teacher-forced s | streamed s | speed-up | "
        "max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        phi = "1 LM (`nce`)" if r["experts"] == 1 else f"{r['experts']} LMs (`nce_mix`)"
        shape = f"{r['shape']} (vocab {r['vocab']:,}, length {r['length']})"
        lines.append(
            f"| {shape} | {phi} | {r['completions']:,} | {r['teacher_forced_s']:.2f} | "
            f"{r['streamed_s']:.2f} | {r['speedup']:.1f}x | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + (
        f"\n\nOne G step's rollout rewards, batch {result['batch']}, {result['rollouts']} rollouts, "
        f"median of {result['reps']} after a warm-up ({result['machine_line']}, "
        f"{result['finished']}).\n\nCommand: `{result['command']}`"
    )


def mismatch(result: dict) -> int:
    worst = max(r["max_abs_diff"] for r in result["rows"])
    if worst > TOL:
        print(f"MISMATCH: streamed and teacher-forced rewards differ by {worst:.2e} > {TOL}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


BENCH = Benchmark(section="rollout", default_json="benchmarks/rollout.json", measure=measure,
                  render=render, add_arguments=add_arguments, exit_code=mismatch)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main(BENCH, __doc__.splitlines()[0]))
