"""`raygan demo`: the whole pipeline on data it makes itself, with a local Ray started in-process.

prepare (a seeded random oracle, no file) -> train (Ray Train, 2 CPU workers, DDP) -> tune (PBT,
2 single-process trials from the trained checkpoint) -> serve the best checkpoint on 127.0.0.1
(Ray Serve) -> samples over HTTP. Small enough for a laptop: a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import yaml

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
# A small PBT from the trained checkpoint: the format of tune_spaces/*.yaml, at demo size.
DEMO_SPACE = {
    "metric": "nll_oracle",
    "mode": "min",
    "trials": 2,
    "perturbation_interval": 40,
    "report_every": 20,
    "quantile_fraction": 0.5,
    "resample_probability": 0.25,
    "fixed": {"estimator": "gumbel", "loss": "rsgan", "batch_size": 64, "mle_steps": 0,
              "d_pretrain_steps": 0, "adv_steps": 120, "eval_samples": 500},
    "search": {
        "g_lr": {"loguniform": [1.0e-5, 1.0e-3]},
        "d_lr_ratio": {"loguniform": [0.1, 10.0]},
        "d_steps": {"randint": [1, 5]},
    },
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_demo(out: str, *, fresh: bool = True, log=print) -> dict:
    from raygan.client import generate
    from raygan.data import prepare_oracle
    from raygan.serve import shutdown_server, start_server
    from raygan.train import fit
    from raygan.tune import run_tune

    root = Path(out).resolve()
    data, run, tune = root / "data", root / "run", root / "tune"
    log(f"[1/4] prepare: 4,000 + 1,000 samples of a random oracle (vocab 200, length 12) -> {data}")
    prepare_oracle(str(data), oracle="random", num_samples=4000, num_test=1000, vocab_size=200,
                   max_len=12, seed=0, overwrite=True, progress=False)  # fmt: skip
    log(f"[2/4] train: Ray Train, {DEMO_TRAIN['num_workers']} CPU workers (DDP) -> {run}")
    summary = fit(str(data), str(run), DEMO_TRAIN, fresh=fresh, log=lambda *_: None)
    log("  final metrics: " + json.dumps(summary["final_metrics"]))
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(DEMO_SPACE, sort_keys=False))
    log(f"[3/4] tune: PBT over g_lr, d_lr_ratio, d_steps ({space}), from {run / 'final'} -> {tune}")
    tuned = run_tune(str(space), str(data), str(tune), overrides={"init_from": str(run / "final")},
                     fresh=fresh, log=lambda *_: None)  # fmt: skip
    log((tune / "results.md").read_text().rstrip())
    log(f"  best: {tuned['best']['checkpoint']} (NLL_oracle {tuned['best']['metric']:.4f})")
    log(
        "[4/4] serve: the best generator on Ray Serve; 5 samples over HTTP (token ids of the oracle's vocabulary):"
    )
    url = start_server(tune / "best", port=_free_port())
    try:
        response = generate(url, n=5, seed=0)
        log(
            f"  POST {url}/generate -> step {response['model']['step']} of {response['model']['checkpoint']}"
        )
        for text in response["samples"]:
            log("  " + text)
    finally:
        shutdown_server()
    return {"train": summary, "tune": tuned, "samples": response["samples"]}
