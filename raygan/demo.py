"""`raygan demo`: the whole pipeline on a corpus that ships with raygan, with a local Ray in-process.

prepare (10,000 COCO captions, raygan/corpora) -> train (Ray Train, 2 CPU workers, DDP: MLE,
D pretraining, then rollout REINFORCE on D's logit, the `ratio` recipe) -> tune (PBT, 2
single-process trials from the trained checkpoint, ranked by held-out NLL) -> serve the best
checkpoint on 127.0.0.1 (Ray Serve) -> generated sentences over HTTP, some from a prefix. A few
minutes on 2 cores; the sentences are those of a small model trained for a minute or two.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

CORPUS = "coco_captions.txt"  # raygan/corpora/LICENSE.md: MS-COCO captions, CC BY 4.0
PREFIXES = ("a man", "a woman", "two dogs")
DEMO_TRAIN = {
    "recipe": "ratio",
    "num_workers": 2,
    "batch_size": 64,
    "mle_steps": 400,
    "d_pretrain_steps": 40,
    "adv_steps": 20,
    "d_steps": 2,
    "rollout_num": 2,
    "eval_every": 100,
    "d_pretrain_eval_every": 40,
    "eval_samples": 300,
    "checkpoint_every": 100,
    "patience": 0,
}
# A small PBT from the trained checkpoint: the format of tune_spaces/*.yaml, at demo size.
DEMO_SPACE = {
    "metric": "nll_test",
    "mode": "min",
    "trials": 2,
    "perturbation_interval": 20,
    "report_every": 10,
    "quantile_fraction": 0.5,
    "resample_probability": 0.25,
    "fixed": {"recipe": "ratio", "batch_size": 64, "mle_steps": 0, "d_pretrain_steps": 0,
              "adv_steps": 40, "rollout_num": 2, "eval_samples": 300, "patience": 0},
    "search": {
        "g_lr": {"loguniform": [1.0e-4, 1.0e-3]},
        "d_lr_ratio": {"loguniform": [0.1, 10.0]},
        "d_steps": {"randint": [1, 3]},
    },
}  # fmt: skip
# `raygan demo --smoke-test`: every stage, each a few steps (the tests run it).
SMOKE_TRAIN = {**DEMO_TRAIN, "mle_steps": 30, "d_pretrain_steps": 4, "adv_steps": 4,
               "eval_every": 30, "d_pretrain_eval_every": 4, "eval_samples": 50, "checkpoint_every": 30}
SMOKE_SPACE = {**DEMO_SPACE, "perturbation_interval": 4, "report_every": 2,
               "fixed": {**DEMO_SPACE["fixed"], "adv_steps": 4, "eval_samples": 50}}  # fmt: skip


def corpus_path() -> Path:
    """The shipped corpus (a file inside the installed package)."""
    return Path(str(resources.files("raygan") / "corpora" / CORPUS))


def run_demo(out: str, *, fresh: bool = True, log=print, smoke_test: bool = False) -> dict:
    """The pipeline into `out` (`smoke_test`: a few steps of each stage). Returns the run and
    search summaries and the generated sentences."""
    from raygan.data.prepare import prepare_text
    from raygan.run.ray_env import free_port
    from raygan.run.train import fit
    from raygan.run.tune import run_tune
    from raygan.serve.app import shutdown_server, start_server
    from raygan.serve.client import generate

    root = Path(out).resolve()
    data, run, tune = root / "data", root / "run", root / "tune"
    log(f"[1/4] prepare: {corpus_path().name} (10,000 MS-COCO captions, CC BY 4.0) -> {data}")
    prepared = prepare_text([str(corpus_path())], str(data), tokenizer="word", seed=0,
                            overwrite=True, progress=False)  # fmt: skip
    log(f"  {prepared.splits['train'].kept:,} train / {prepared.splits['test'].kept:,} held-out "
        f"sentences, vocabulary {prepared.vocab_size:,}, {prepared.max_len_note}")  # fmt: skip
    log(f"[2/4] train: Ray Train, 2 CPU workers (DDP) -> {run}")
    summary = fit(str(data), str(run), SMOKE_TRAIN if smoke_test else DEMO_TRAIN, fresh=fresh, log=lambda *_: None)
    log(f"  report: {summary['report']}")
    space_file = root / "space.yaml"
    space_file.write_text(yaml.safe_dump(SMOKE_SPACE if smoke_test else DEMO_SPACE, sort_keys=False))
    log(f"[3/4] tune: PBT over g_lr, d_lr_ratio, d_steps ({space_file}) from {run / 'final'} -> {tune}")
    tuned = run_tune(str(space_file), str(data), str(tune), overrides={"init_from": str(run / "final")},
                     fresh=fresh, log=lambda *_: None)  # fmt: skip
    log((tune / "results.md").read_text().rstrip())
    log(f"  best: trial {tuned['best']['trial_id']}, NLL_test {tuned['best']['metric']:.4f}; "
        f"report: {tuned['report']}")  # fmt: skip
    log("[4/4] serve: the best generator on Ray Serve, sentences over HTTP")
    url = start_server(tune / "best", port=free_port())
    try:
        response = generate(url, n=5, seed=0)
        log(f"  POST {url}/generate -> step {response['model']['step']} of {response['model']['checkpoint']}")
        samples = list(response["samples"])
        for text in samples:
            log("  " + text)
        for prefix in PREFIXES:
            (text,) = generate(url, n=1, seed=1, prefix=prefix)["samples"]
            samples.append(text)
            log(f"  [{prefix}] {text}")
    finally:
        shutdown_server()
    log(f"wrote {root}: data/ (Parquet shards, tokenizer), run/ (checkpoints, tb/, report.md), "
        "tune/ (trials, results.md, best/)")
    log("next:\n"
        f"  raygan sample --checkpoint {tune / 'best'} -n 5 --temperature 0.8 --prefix \"a cat\"\n"
        f"  raygan serve --checkpoint {tune / 'best'} --port 8000\n"
        f"  tensorboard --logdir {run / 'tb'}\n"
        f"  raygan train --data {data} --out runs/coco --recipe ratio     # the full-size recipe")  # fmt: skip
    return {"train": summary, "tune": tuned, "samples": samples}
