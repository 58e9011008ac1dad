"""Training throughput on one GPU: raygan's MLE step and Gumbel adversarial step, fp32 vs bf16.

    python scripts/bench_gpu.py --json gpu_check_out/bench_gpu.json    # a CUDA machine, ~2 minutes
    python scripts/bench_gpu.py --from-json gpu_check_out/bench_gpu.json --markdown BENCHMARKS.md
    python scripts/bench_gpu.py --smoke-test                            # tiny sizes; CPU is fine

Sizes (G embed = G hidden, D embed = D hidden):
  oracle  vocab 5000, length 20, G 32, D 64, batch 64 (SeqGAN's; raygan's defaults)
  large   vocab 32000, length 32, G 1024, D 1024, batch 256
Each (size, step, precision) times raygan.core.gan's own step functions on bare models (no DDP, no Ray)
with synchronised CUDA clocks; bf16 is `torch.autocast("cuda", torch.bfloat16)`, what
raygan.run.loop does with bf16=true (on CPU the loop ignores it, and so do the bf16 rows here).

tokens/s = batch x length / step time. The ceiling is a measured large bf16 `torch.matmul`
(TFLOP/s). Model FLOPs per step are counted analytically from the matmuls (`step_flops`): LSTM
gates, the vocab projection and D's soft-input embedding, forward once and backward twice where
both weights and inputs need gradients; element-wise work (softmax, Gumbel noise, Adam) is not
counted, so "% of ceiling" is a floor on the hardware's use (model FLOPs utilisation).
tests/test_gpu.py checks the count against torch's FlopCounterMode.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import platform
import shlex
import statistics
import sys
import time

import torch

from raygan.bench.harness import Benchmark, main
from raygan.core.config import GANConfig, ModelConfig
from raygan.core.gan import adversarial_step, mle_step
from raygan.core.malloc import keep_freed_memory
from raygan.core.models import Discriminator, Generator

STEPS = ("mle", "gumbel")
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class Size:
    name: str
    vocab: int
    max_len: int
    g_dim: int  # G embed = hidden
    d_dim: int  # D embed = hidden
    batch: int
    warmup: int
    reps: int

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab, max_len=self.max_len, g_embed_dim=self.g_dim,
            g_hidden_dim=self.g_dim, d_embed_dim=self.d_dim, d_hidden_dim=self.d_dim,
        )  # fmt: skip


FULL = (
    Size("oracle", vocab=5000, max_len=20, g_dim=32, d_dim=64, batch=64, warmup=5, reps=30),
    Size("large", vocab=32000, max_len=32, g_dim=1024, d_dim=1024, batch=256, warmup=3, reps=10),
)
SMOKE = (
    Size("oracle", vocab=50, max_len=8, g_dim=8, d_dim=16, batch=8, warmup=1, reps=2),
    Size("large", vocab=200, max_len=8, g_dim=32, d_dim=32, batch=16, warmup=1, reps=2),
)
MATMUL_N = {"full": 8192, "smoke": 256}


# -- model FLOPs --------------------------------------------------------------------------------
def lstm_flops(inputs: int, hidden: int) -> int:
    """One LSTM step of one row: 4 gates of (inputs + hidden) x hidden multiply-adds."""
    return 2 * 4 * hidden * (inputs + hidden)


def step_flops(step: str, size: Size) -> int:
    """Matmul FLOPs of one `mle` step, or one `gumbel` adversarial step with d_steps=1.

    Per token: G forward = LSTM + vocab projection; D = soft one-hots @ embedding (`emb`) and
    LSTM + head (`body`). A backward pass costs twice its forward when both the weights and the
    inputs need gradients; once when only the weights do (D's embedding of G's no-grad samples).
    """
    n = size.batch * size.max_len  # tokens per batch
    g = lstm_flops(size.g_dim, size.g_dim) + 2 * size.g_dim * size.vocab
    emb = 2 * size.vocab * size.d_dim
    body = lstm_flops(size.d_dim, size.d_dim) + 2 * size.d_dim
    if step == "mle":
        return 3 * g * n
    if step == "gumbel":
        # D step: a no-grad Gumbel rollout of G; D forward + backward on real and fake (2n rows),
        # whose inputs need no gradient.
        d_step = g * n + 2 * n * (2 * emb + 3 * body)
        # G step: the rollout with gradient, D forward + backward into G's soft one-hots, and
        # D on the real batch without gradient (the relativistic loss).
        g_step = 3 * g * n + 3 * (emb + body) * n + (emb + body) * n
        return d_step + g_step
    raise ValueError(f"unknown step {step!r}")


# -- timing -------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, warmup: int, reps: int) -> list[float]:
    """Seconds per call, each call between two device synchronisations."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int) -> dict:
    """TFLOP/s of an (n, n) @ (n, n) matmul, the median over repetitions of 10 back to back."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)

    def ten() -> None:
        for _ in range(10):
            torch.matmul(a, b)

    times = timed(ten, device, warmup=2, reps=5)
    return {"n": n, "dtype": str(dtype), "tflops": 10 * 2 * n**3 / statistics.median(times) / 1e12}


def autocast(precision: str, device: torch.device):
    """raygan.run.loop's rule: bf16 autocast on CUDA only."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lstm_ops(fn) -> list[str]:
    """The recurrent ops one call of `fn` dispatches: aten::_cudnn_rnn on cuDNN, else others."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = {e.key for e in prof.key_averages()}
    return sorted(n for n in names if "rnn" in n.lower() or "lstm" in n.lower())


def lstm_path(ops: list[str]) -> str:
    if any("cudnn" in op for op in ops):
        return "cuDNN"
    if any("mkldnn" in op for op in ops):
        return "oneDNN"
    return "native" if ops else "none"


# -- one configuration --------------------------------------------------------------------------
def make_step(step: str, size: Size, device: torch.device):
    """A closure running one raygan step on fresh models and random batches on `device`."""
    torch.manual_seed(0)
    cfg = size.model_config()
    gen, disc = Generator(cfg).to(device), Discriminator(cfg).to(device)
    rng = torch.Generator(device=device).manual_seed(0)
    batches = [
        (torch.randint(0, size.vocab, (size.batch, size.max_len), device=device, generator=rng),
         None)
        for _ in range(4)
    ]  # fmt: skip
    real = itertools.cycle(batches)
    if step == "mle":
        opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
        return lambda: mle_step(gen, opt, *next(real), lr=1e-3, grad_clip=5.0)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-4)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4)
    gan = GANConfig(estimator="gumbel", loss="rsgan")
    return lambda: adversarial_step(
        gen, disc, opt_g, opt_d, real, cfg=gan, g_lr=1e-4, d_lr=1e-4, d_steps=1, beta=1.0,
        generator=rng,
    )  # fmt: skip


def bench_one(step: str, size: Size, precision: str, device: torch.device, ceiling: float) -> dict:
    row: dict = {"size": size.name, "step": step, "precision": precision}
    if precision == "bf16" and device.type != "cuda":
        return {**row, "skipped": "bf16 autocast is CUDA-only (raygan.run.loop ignores it on CPU)"}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        run = make_step(step, size, device)
        stats: dict = {}

        def call() -> None:
            with autocast(precision, device):
                stats.update(run())

        times = timed(call, device, warmup=size.warmup, reps=size.reps)
        ops = lstm_ops(call)
    except Exception as exc:  # a bounded check reports what broke and goes on
        return {**row, "error": f"{type(exc).__name__}: {exc}"[:300]}
    median = statistics.median(times)
    flops = step_flops(step, size)
    row.update(
        median_s=median,
        times_s=times,
        tokens_per_s=size.batch * size.max_len / median,
        flops_per_step=flops,
        tflops=flops / median / 1e12,
        ceiling_fraction=flops / median / 1e12 / ceiling,
        lstm_ops=ops,
        lstm_path=lstm_path(ops),
        finite=all(math.isfinite(v) for v in stats.values()),
        last_stats=stats,
    )
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return row


# -- report -------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "python": platform.python_version(),
    }  # fmt: skip
    return env


def table(result: dict) -> str:
    lines = [
        "| size | step | precision | ms/step | tokens/s | model TFLOP/s | % of bf16 ceiling "
        "| LSTM | peak GB |",
        "|---|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["rows"]:
        head = f"| {r['size']} | {r['step']} | {r['precision']} |"
        if "skipped" in r or "error" in r:
            lines.append(f"{head} {r.get('skipped') or r.get('error')} | | | | | |")
            continue
        finite = "" if r["finite"] else " (non-finite loss!)"
        peak = f"{r['peak_memory_gb']:.1f}" if "peak_memory_gb" in r else "-"
        lines.append(
            f"{head} {r['median_s'] * 1e3:.2f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} "
            f"| {100 * r['ceiling_fraction']:.3g}%{finite} | {r['lstm_path']} | {peak} |"
        )
    return "\n".join(lines)


def report_text(result: dict) -> str:
    env, c = result["environment"], result["ceiling"]
    sizes = "; ".join(
        f"{s['name']}: vocab {s['vocab']:,}, length {s['max_len']}, G {s['g_dim']}, D {s['d_dim']}, "
        f"batch {s['batch']}"
        for s in result["sizes"]
    )
    return "\n".join(
        [
            f"{env['device']}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}; "
            f"TF32 matmul {env['matmul_allow_tf32']}, TF32 cuDNN {env['cudnn_allow_tf32']} "
            "(torch's defaults, which raygan keeps).",
            f"Measured matmul ceiling ({c['bf16']['n']}²): bf16 {c['bf16']['tflops']:.3g} TFLOP/s, "
            f"fp32 {c['fp32']['tflops']:.3g} TFLOP/s. Sizes: {sizes}.",
            "",
            table(result),
            "",
            "tokens/s = batch × length / step; the Gumbel step is one D update and one G update "
            "(d_steps=1). Model FLOPs count the matmuls only (scripts/bench_gpu.py: step_flops).",
            f"Command: `{result['command']}`; total {result['total_s']:.0f} s.",
        ]
    )


def run(smoke: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = SMOKE if smoke else FULL
    n = MATMUL_N["smoke" if smoke else "full"]
    result: dict = {
        "command": "python " + shlex.join(sys.argv),
        "environment": environment(device),
        "sizes": [dataclasses.asdict(s) for s in sizes],
        "ceiling": {
            "bf16": matmul_ceiling(device, torch.bfloat16, n),
            "fp32": matmul_ceiling(device, torch.float32, n),
        },
    }
    ceiling = result["ceiling"]["bf16"]["tflops"]
    print(f"{result['environment']['device']}: bf16 matmul {ceiling:.3g} TFLOP/s", flush=True)
    result["rows"] = []
    for size, step, precision in itertools.product(sizes, STEPS, PRECISIONS):
        row = bench_one(step, size, precision, device, ceiling)
        result["rows"].append(row)
        what = row.get("skipped") or row.get("error") or f"{row['tokens_per_s']:,.0f} tokens/s"
        print(f"  {size.name} {step} {precision}: {what}", flush=True)
    return result


def measure(args: argparse.Namespace) -> dict:
    keep_freed_memory()  # G steps and samples in this process: see raygan.core.malloc
    started = time.perf_counter()
    result = run(args.smoke_test)
    result["total_s"] = time.perf_counter() - started
    result["markdown"] = report_text(result)  # scripts/gpu_check.sh prints it
    return result


def failed(result: dict) -> int:
    return int(any("error" in r or not r.get("finite", True) for r in result["rows"]))


BENCH = Benchmark(section="gpu", default_json="benchmarks/gpu.json", measure=measure,
                  render=report_text, exit_code=failed)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main(BENCH, __doc__.split("\n")[0]))
