"""Projected tokens/s of 2-64 data-parallel GPU workers, from measured step times and stated
network bandwidths: the tables of docs/scaling.md.

    python scripts/project_scaling.py --markdown docs/scaling.md
    python scripts/project_scaling.py            # print them

Inputs, all measured and committed: one GPU's step times (benchmarks/gpu.json, scripts/
bench_gpu.py) and the gradient bytes DDP all-reduces per update (the models' parameter counts,
fp32 gradients whatever the autocast). The reader's rows/s and prepare's MB/s per core, which
docs/scaling.md quotes in its prose, come from BENCHMARKS.md (scripts/bench_prepare.py).

The model of a step with W workers, each with the measured single-GPU batch (weak scaling):
    t(W) = t_compute + sum over the step's all-reduces of [2 (W-1)/W * S / B + 2 (W-1) * a]
(NCCL's ring: bandwidth term plus a per-hop latency `a`), with no overlap of communication and
backward (DDP overlaps them bucket by bucket, so this is the lower bound; the upper bound is
t_compute whenever t_compute exceeds the communication). tokens/s = W * batch * length / t(W).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raygan.bench.markdown import markdown_table, replace_section  # noqa: E402

WORKERS = (2, 4, 8, 16, 32, 64)
# Stated, not measured: (name, bytes/s per worker, latency per ring hop in s)
NETWORKS = (
    ("10 Gb/s Ethernet (one GPU per node, e.g. g5.xlarge)", 1.25e9, 50e-6),
    ("100 Gb/s Ethernet / EFA", 12.5e9, 20e-6),
    ("3.2 Tb/s InfiniBand/EFA shared by 8 GPUs (400 Gb/s each)", 50e9, 10e-6),
)
# The precision each size runs best in on one H100 (BENCHMARKS.md, GPU section).
PRECISION = {"oracle": "fp32", "large": "bf16"}
STEP_ALL_REDUCES = {"mle": ("G",), "gumbel": ("D", "G")}  # d_steps=1, as bench_gpu measures


def gradient_bytes(size: dict) -> dict[str, int]:
    from raygan.core.config import ModelConfig
    from raygan.core.models import Discriminator, Generator

    cfg = ModelConfig(vocab_size=size["vocab"], max_len=size["max_len"], g_embed_dim=size["g_dim"],
                      g_hidden_dim=size["g_dim"], d_embed_dim=size["d_dim"],
                      d_hidden_dim=size["d_dim"])  # fmt: skip
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    return {"G": 4 * count(Generator(cfg)), "D": 4 * count(Discriminator(cfg))}


def all_reduce_s(nbytes: int, workers: int, bandwidth: float, latency: float) -> float:
    if workers == 1:
        return 0.0
    return 2 * (workers - 1) / workers * nbytes / bandwidth + 2 * (workers - 1) * latency


def project(gpu: dict) -> dict:
    rows = []
    for size in gpu["sizes"]:
        grads = gradient_bytes(size)
        for step, reduces in STEP_ALL_REDUCES.items():
            (measured,) = [r for r in gpu["rows"] if r["size"] == size["name"]
                           and r["step"] == step and r["precision"] == PRECISION[size["name"]]]  # fmt: skip
            compute = measured["median_s"]
            tokens = size["batch"] * size["max_len"]
            for network, bandwidth, latency in NETWORKS:
                cells = []
                for w in WORKERS:
                    comm = sum(all_reduce_s(grads[n], w, bandwidth, latency) for n in reduces)
                    cells.append({"workers": w, "tokens_per_s": w * tokens / (compute + comm),
                                  "efficiency": compute / (compute + comm),
                                  "comm_bound": comm > compute})  # fmt: skip
                rows.append({"size": size["name"], "step": step,
                             "precision": PRECISION[size["name"]], "compute_ms": compute * 1e3,
                             "one_gpu_tokens_per_s": tokens / compute,
                             "gradient_mb": sum(grads[n] for n in reduces) / 1e6,
                             "network": network, "cells": cells})  # fmt: skip
    return {"device": gpu["environment"]["device"], "rows": rows}


def render(projection: dict) -> str:
    header = ["size, step (1 GPU)", "all-reduced MB", "network",
              *[f"W={w}" for w in WORKERS]]  # fmt: skip
    body = []
    for r in projection["rows"]:
        cells = [f"{c['tokens_per_s'] / 1e3:,.0f}k · {c['efficiency']:.0%}"
                 + (" †" if c["comm_bound"] else "") for c in r["cells"]]  # fmt: skip
        first = (f"{r['size']} {r['step']} {r['precision']}: {r['compute_ms']:.1f} ms, "
                 f"{r['one_gpu_tokens_per_s'] / 1e3:,.0f}k tok/s")  # fmt: skip
        body.append([first, f"{r['gradient_mb']:.1f}", r["network"].split(" (")[0], *cells])
    return (
        f"Tokens/s of W workers · scaling efficiency (one GPU's step time over the projected "
        f"step), from {projection['device']} step times; † communication takes longer than "
        f"the step's compute, so even perfect overlap cannot hide it.\n\n"
        + markdown_table(header, body)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-json", default=str(ROOT / "benchmarks" / "gpu.json"))
    parser.add_argument("--markdown", help="write the tables into this file's projection section")
    args = parser.parse_args(argv)
    text = render(project(json.loads(Path(args.gpu_json).read_text())))
    if args.markdown:
        replace_section(args.markdown, "projection", text)
        print(f"wrote {args.markdown}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
