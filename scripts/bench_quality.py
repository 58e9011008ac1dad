"""Quality tables through the real trainer (`raygan train` on Ray Train): the SeqGAN oracle over
seeds, COCO captions, and quality-diversity curves over temperature. JSON, PNG and BENCHMARKS.md.

    python scripts/bench_quality.py --oracle-path ../shared/data/seqgan_oracle/target_params.npz \
        --coco ../shared/data/image_coco --out bench_out/quality
    python scripts/bench_quality.py --from-json benchmarks/quality.json   # tables only
    python scripts/bench_quality.py --small --out /tmp/q                  # tiny, under a minute

Finished runs under --out are reused and unfinished ones resume, so an interrupted benchmark is
continued by running the same command again. See raygan/quality.py for what is measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raygan.checkpoint import atomic_write_text  # noqa: E402
from raygan.config import parse_key_values  # noqa: E402
from raygan.errors import RayganError  # noqa: E402
from raygan.quality import QualityPlan, markdown, plot, run_quality, trainer_settings  # noqa: E402
from raygan.report import load_json, replace_section  # noqa: E402

SECTION = "quality"
# The small mode: a tiny random oracle and model, a handful of steps; it checks the whole
# pipeline (runs, scoring, sweeps, JSON, plot), not quality.
SMALL = {
    "seeds": (0,),
    "methods": ("gumbel",),
    "num_train": 512,
    "num_test": 256,
    "oracle_vocab": 40,
    "max_len": 8,
    "mle_steps": 16,
    "d_pretrain_steps": 2,
    "adv_steps": {"gumbel": 3, "rollout": 2, "dense": 3},
    "eval_samples": 256,
    "temperatures": (0.7, 1.0, 1.4),
    "text_max_len": 10,
    "text_mle_steps": 16,
    "text_adv_steps": 3,
    "text_hypotheses": 128,
    "text_self_bleu": 64,
    "train_overrides": {
        "g_embed_dim": 16,
        "g_hidden_dim": 16,
        "d_embed_dim": 16,
        "d_hidden_dim": 16,
        "batch_size": 32,
        "rollout_num": 2,
    },
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench_out/quality", help="working directory (data and runs)")
    p.add_argument(
        "--oracle-path", help="SeqGAN target_params.npz; default: a seeded random oracle"
    )
    p.add_argument(
        "--coco", help="image_coco directory (train/image_coco.txt, test/image_coco_test.txt)"
    )
    p.add_argument("--skip-oracle", action="store_true", help="run the text benchmark only")
    p.add_argument("--text-train", help="text benchmark training file (instead of --coco)")
    p.add_argument("--text-test", help="text benchmark test file (instead of --coco)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default="gumbel,rollout,dense")
    p.add_argument("--mle-steps", type=int, default=QualityPlan.mle_steps)
    p.add_argument("--adv-steps", default="gumbel=300,rollout=30,dense=300", help="per method")
    p.add_argument("--text-mle-steps", type=int, default=QualityPlan.text_mle_steps)
    p.add_argument("--text-adv-steps", type=int, default=QualityPlan.text_adv_steps)
    p.add_argument("--text-method", default=QualityPlan.text_method)
    p.add_argument("--fed-model", help="sentence-transformers model (name or path), loaded offline")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="raygan train settings for every run, e.g. use_gpu=true num_workers=2",
    )
    p.add_argument("--section", default=SECTION, help="the BENCHMARKS.md section to write")
    p.add_argument(
        "--small", action="store_true", help="tiny sizes: checks the pipeline, not quality"
    )
    p.add_argument("--json", default="benchmarks/quality.json")
    p.add_argument("--png", default="benchmarks/quality.png")
    p.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"), help="'' to skip")
    p.add_argument("--from-json", help="only regenerate the BENCHMARKS.md section from this JSON")
    args = p.parse_args(argv)
    try:
        if args.from_json:
            replace_section(args.markdown, args.section, markdown(load_json(args.from_json)))
            return 0
        plan = _plan(args)
        result = run_quality(plan)
    except RayganError as exc:
        print(f"bench_quality: {exc}", file=sys.stderr)
        return 2
    result["command"] = "python " + shlex.join(["scripts/bench_quality.py", *sys.argv[1:]])
    result["machine"] = _machine(trainer_settings(plan.train_overrides).use_gpu)
    result["finished"] = time.strftime("%Y-%m-%d")
    result["plot"] = Path(args.png).name
    plot(result, args.png)
    atomic_write_text(args.json, json.dumps(result, indent=2))
    print(f"wrote {args.json} and {args.png}")
    if args.markdown:
        replace_section(args.markdown, args.section, markdown(result))
        print(f"updated {args.markdown}")
    return 0


def _machine(use_gpu: bool) -> str:
    import torch

    if use_gpu:
        return f"{torch.cuda.get_device_name()}, Ray Train GPU workers"
    return f"{platform.machine()}, Ray Train CPU workers, torch threads {torch.get_num_threads()}"


def _plan(args) -> QualityPlan:
    text_train, text_test = args.text_train, args.text_test
    if args.coco:
        text_train = str(Path(args.coco) / "train" / "image_coco.txt")
        text_test = str(Path(args.coco) / "test" / "image_coco_test.txt")
    try:
        adv = {k: int(v) for k, v in (item.split("=") for item in args.adv_steps.split(","))}
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise RayganError(
            f"--adv-steps wants method=steps,... and --seeds integers, got {args.adv_steps!r}, "
            f"{args.seeds!r}"
        ) from None
    plan = QualityPlan(
        out=args.out,
        oracle=not args.skip_oracle,
        oracle_path=args.oracle_path,
        text_train=text_train,
        text_test=text_test,
        seeds=seeds,
        methods=tuple(m for m in args.methods.split(",") if m),
        mle_steps=args.mle_steps,
        adv_steps=adv,
        text_method=args.text_method,
        text_mle_steps=args.text_mle_steps,
        text_adv_steps=args.text_adv_steps,
        fed_model=args.fed_model,
    )
    if args.small:
        plan = dataclasses.replace(plan, **SMALL)
    settings = {**plan.train_overrides, **parse_key_values(args.set)}
    trainer_settings(settings)  # a key or value `raygan train` would refuse fails here, not later
    return dataclasses.replace(plan, train_overrides=settings)


if __name__ == "__main__":
    sys.exit(main())
