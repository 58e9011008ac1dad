"""`raygan demo`: the whole pipeline on data it makes itself, with a local Ray started in-process.

prepare (a seeded random oracle, no file) -> train (Ray Train, 2 CPU workers, DDP) -> samples and
NLL metrics from the final checkpoint. Small enough for a laptop: a few minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_TRAIN = {
    "num_workers": 2,
    "batch_size": 64,
    "mle_steps": 300,
    "d_pretrain_steps": 20,
    "adv_steps": 100,
    "estimator": "gumbel",
    "loss": "rsgan",
    "d_steps": 3,
    "eval_every": 100,
    "eval_samples": 500,
    "checkpoint_every": 100,
}


def run_demo(out: str, *, fresh: bool = True, log=print) -> dict:
    import torch

    from raygan.checkpoint import load_generator
    from raygan.data import load_codec, prepare_oracle
    from raygan.train import fit

    root = Path(out).resolve()
    data, run = root / "data", root / "run"
    log(f"[1/3] prepare: 4,000 + 1,000 samples of a random oracle (vocab 200, length 12) -> {data}")
    prepare_oracle(str(data), oracle="random", num_samples=4000, num_test=1000, vocab_size=200,
                   max_len=12, seed=0, overwrite=True, progress=False)  # fmt: skip
    log(f"[2/3] train: Ray Train, {DEMO_TRAIN['num_workers']} CPU workers (DDP) -> {run}")
    summary = fit(str(data), str(run), DEMO_TRAIN, fresh=fresh, log=lambda *_: None)
    log("final metrics: " + json.dumps(summary["final_metrics"], indent=None))
    log("[3/3] samples from the final checkpoint (token ids of the oracle's vocabulary):")
    gen, _, _ = load_generator(run / "final")
    codec = load_codec(str(run / "final"))
    samples = gen.sample(5, generator=torch.Generator().manual_seed(0))
    for row in samples.tokens_BT.tolist():
        log("  " + codec.decode(row))
    return summary
