"""Training speed at SeqGAN oracle sizes: plain PyTorch vs raygan's steps vs raygan on Ray Train.

    python scripts/bench_train.py --markdown BENCHMARKS.md       # full run, ~10 minutes on 2 CPUs
    python scripts/bench_train.py --smoke-test                   # tiny sizes, checks the script

Sizes: vocab 5000, length 20, G embed/hidden 32/32, D 64/64, batch 64. The oracle is SeqGAN's
(../shared/data/seqgan_oracle/target_params.npz) when present, else `Oracle.random(seed=0)`.
Sections, all in one run so that the noisy machine affects every side alike:
  1. plain loop: a hand-written MLE step and a Gumbel G+D step (nn.Embedding/LSTM/Linear, Adam,
     clip 5), interleaved with raygan's steps;
  2. raygan step functions in this process: mle_step, adversarial_step (gumbel, rollout, dense),
     rollout g_step alone, an MLE epoch (plain vs raygan), NLL_oracle of 10,000 samples,
     sample_categorical vs torch.multinomial, a torch.profiler breakdown of a rollout g_step,
     and the floors: the projection, exp and D-forward rates that bound the rollout g_step and
     NLL_oracle on this CPU;
  3. raygan under Ray Train: 1 worker on a local ray.init(num_cpus=2), then 2 workers on a
     2-node x 1-CPU `ray.cluster_utils.Cluster`, splitting the batch and then with a whole
     batch each; per-step times per phase come from the wall-clock stamps of rank 0's
     TensorBoard events (evaluation and checkpointing excluded);
  3a. (before 3) two processes without Ray: raygan's step alone, two copies at once (a whole
     and a half batch each), and the pair under gloo DDP: the machine's ceiling for 2 workers;
  4. data ingest: RankBatches rows/s vs what training consumes, and Ray Data read_parquet.
Every time is a median over repetitions after warm-up; the JSON keeps every repetition. This
process runs torch with 1 thread unless --threads says otherwise (see THREADS_HELP); the MLE and
Gumbel steps are also timed at the other thread count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from raygan.bench.harness import Benchmark, machine, main
from raygan.bench.train_speed import (
    FULL,
    SMOKE,
    Bench,
    Sizes,
    bench_floor,
    bench_nll_and_sampler,
    bench_rank_batches,
    bench_ray,
    bench_steps,
    bench_two_processes,
    corpus_batches,
    model_config,
    profile_rollout_g_step,
)
from raygan.bench.train_tables import ingest_summary, ratio_table, ratios, report_text, times_table
from raygan.core.malloc import keep_freed_memory
from raygan.core.models import Oracle
from raygan.data.prepare import prepare_oracle
from raygan.run.ray_env import ray_environment

SEQGAN_ORACLE = (
    Path(__file__).resolve().parents[1].parent / "shared/data/seqgan_oracle/target_params.npz"
)
THREADS_HELP = (
    "torch intra-op threads in this process (default 1: Ray's 1-CPU workers run 1 thread, and on "
    "this shared 2-CPU machine 2 threads were up to 5x slower under load)"
)

# -- data, report, main -------------------------------------------------------------------------
def prepare(work: Path, s: Sizes, smoke: bool) -> tuple[str, Oracle, str]:
    data_dir = str(work / "data")
    common = dict(num_samples=s.num_train, num_test=s.num_test, max_len=s.max_len, seed=0,
                  progress=False)  # fmt: skip
    if not smoke and SEQGAN_ORACLE.is_file():
        prepare_oracle(data_dir, oracle="seqgan", oracle_path=str(SEQGAN_ORACLE), **common)
        oracle, which = Oracle.from_seqgan_file(SEQGAN_ORACLE), f"SeqGAN oracle ({SEQGAN_ORACLE})"
    else:
        prepare_oracle(data_dir, oracle="random", vocab_size=s.vocab, **common)
        oracle = Oracle.random(vocab_size=s.vocab, max_len=s.max_len, embed_dim=s.g_dim,
                               hidden_dim=s.g_dim, seed=0)  # fmt: skip
        which = "Oracle.random(seed=0)" + ("" if smoke else f" ({SEQGAN_ORACLE} absent)")
    return data_dir, oracle, which

def run(args: argparse.Namespace, s: Sizes, work: Path) -> dict:
    result: dict = {"command": "python " + shlex.join(sys.argv), "sizes": dataclasses.asdict(s)}
    result["machine"] = machine()
    result["loadavg_start"] = os.getloadavg()  # other work on the machine skews every number
    started = time.perf_counter()
    data_dir, oracle, result["oracle"] = prepare(work, s, args.smoke_test)
    result["prepare_s"] = time.perf_counter() - started
    print(f"oracle: {result['oracle']}; prepared in {result['prepare_s']:.1f} s", flush=True)
    bench = Bench(s, corpus_batches(data_dir, s), model_config(s))
    print("[1-2] steps in one process", flush=True)
    result["steps"] = bench_steps(bench)
    result["nll"] = bench_nll_and_sampler(bench, oracle)
    result["floor"] = bench_floor(bench)
    floors = {k: round(result["floor"][k]["floor_s"], 2) for k in ("rollout_g_step", "nll_oracle")}
    print(f"  floors on this CPU (s): {json.dumps(floors)}", flush=True)
    if s.profile:
        result["rollout_profile"] = profile_rollout_g_step(bench)
    print("[4] RankBatches", flush=True)
    result["ingest"] = {"rank_batches": bench_rank_batches(data_dir, s)}
    result["ingest"].update(ingest_summary(result, s))
    print("[3a] two processes at once vs one, and under DDP, without Ray", flush=True)
    result["two_processes"] = bench_two_processes(s)
    result["loadavg_before_ray"] = os.getloadavg()
    if not args.with_ray:
        result["ratios"] = ratios(result, s)
        return result
    print("[3] Ray Train (and Ray Data)", flush=True)
    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rgb-", dir="/tmp")  # short socket paths
    try:
        result["ray"] = bench_ray(data_dir, work, s)
    finally:
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    result["ratios"] = ratios(result, s)
    return result

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray", action="store_true", help="with --smoke-test: run the Ray sections too (~3 min)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the rollout profile")
    parser.add_argument("--threads", type=int, default=1, help=THREADS_HELP)


def measure(args: argparse.Namespace) -> dict:
    keep_freed_memory()  # G steps and samples in this process: see raygan.core.malloc
    torch.set_num_threads(args.threads)
    args.with_ray = args.ray or not args.smoke_test
    sizes = SMOKE if args.smoke_test else FULL
    sizes = dataclasses.replace(sizes, profile=sizes.profile and not args.no_profile)
    ray_environment()  # RAY_USAGE_STATS_ENABLED=0, RAY_AUTH_MODE=disabled
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        result = run(args, sizes, Path(tmp))
    result["total_s"] = time.perf_counter() - started
    return result


def render(result: dict) -> str:
    """The section, its tables rebuilt from the measurements (so --from-json applies new goals)."""
    sizes = Sizes(**result["sizes"])
    result["ratios"] = ratios(result, sizes)
    result["markdown"] = times_table(result, sizes) + "\n\n" + ratio_table(result["ratios"])
    return report_text(result)


BENCH = Benchmark(section="train", default_json="benchmarks/train.json", measure=measure,
                  render=render, add_arguments=add_arguments)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main(BENCH, __doc__.split("\n")[0]))
