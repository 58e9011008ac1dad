"""The quality-diversity frontier through the real trainer (`raygan train` on Ray Train): MLE's
temperature curve, every shipped recipe and its constant control over seeds on the SeqGAN
oracle, time to quality, and COCO captions. JSON, PNG and a BENCHMARKS.md section.

    python scripts/bench_quality.py --oracle-path ../shared/data/seqgan_oracle/target_params.npz \
        --coco ../shared/data/image_coco --out bench_out/quality --markdown BENCHMARKS.md
    python scripts/bench_quality.py --from-json benchmarks/quality.json --markdown BENCHMARKS.md
    python scripts/bench_quality.py --smoke-test --out /tmp/q             # tiny, a few minutes

Finished runs under --out are reused and unfinished ones resume, so an interrupted benchmark is
continued by running the same command again. raygan/bench/quality.py describes the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raygan.bench.harness import Benchmark  # noqa: E402
from raygan.bench.harness import main as harness_main  # noqa: E402
from raygan.bench.quality import QualityPlan, placement_settings, run_quality  # noqa: E402
from raygan.bench.quality_report import markdown, plot  # noqa: E402
from raygan.core.config import parse_key_values  # noqa: E402
from raygan.core.errors import RayganError  # noqa: E402
from raygan.core.malloc import keep_freed_memory  # noqa: E402

SECTION = "quality"
# The small mode: a tiny random oracle and model, a handful of steps of every recipe; it checks
# the whole pipeline (runs, controls, curves, distances, time curves, JSON, plot), not quality.
_TINY_STEPS = {"d_pretrain_steps": 4, "d_pretrain_pool": 32, "d_pretrain_refresh": 2,
               "adv_steps": 3, "eval_every": 3, "rollout_num": 2, "d_steps": 2}  # fmt: skip
SMALL = {
    "seeds": (0, 1),
    "num_train": 512,
    "num_test": 256,
    "oracle_vocab": 40,
    "max_len": 8,
    "mle_epochs": 3,
    "eval_samples": 256,
    "run_eval_samples": 128,
    "temperatures": (0.7, 0.9, 1.0, 1.2),
    "gan_temperatures": (0.8, 1.0),
    "matched_temperatures": (0.9, 1.0),
    "recipe_overrides": {
        "seqgan": {**_TINY_STEPS, "mle_steps": 48},
        "relgan": {**_TINY_STEPS, "d_pretrain_steps": 0, "mle_steps": 48},
        "scratchgan": {**_TINY_STEPS, "d_pretrain_steps": 0, "batch_size": 64, "mle_steps": 8},
        "ratio": {**_TINY_STEPS, "mle_steps": 32},
        "nce": {**_TINY_STEPS, "mle_steps": 32},
        "nce_mix": {**_TINY_STEPS, "mle_steps": 32, "d_mle_steps": 2},
    },
    "text_mle_epochs": 2,
    "text_max_len": 10,
    "text_hypotheses": 128,
    "text_self_bleu": 64,
    "text_temperatures": (0.8, 1.0, 1.2),
    "train_overrides": {
        "g_embed_dim": 16,
        "g_hidden_dim": 16,
        "d_embed_dim": 16,
        "d_hidden_dim": 16,
        "batch_size": 32,
    },
}


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--recipes", default=",".join(QualityPlan.recipes), help="shipped recipes")
    p.add_argument("--no-controls", action="store_true", help="skip the constant controls")
    p.add_argument("--mle-epochs", type=int, default=QualityPlan.mle_epochs)
    p.add_argument(
        "--eval-samples", type=int, default=QualityPlan.eval_samples,
        help="samples scored for every final NLL_oracle and sweep point (published figures: "
             "the default)",
    )  # fmt: skip
    p.add_argument("--text-recipes", default=",".join(QualityPlan.text_recipes))
    p.add_argument("--text-mle-epochs", type=int, default=QualityPlan.text_mle_epochs)
    p.add_argument(
        "--fed-model",
        help="sentence-transformers model path, loaded offline (default: the `fed` extra's)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="raygan train settings for every run, e.g. use_gpu=true num_workers=2",
    )
    p.add_argument(
        "--no-fed", action="store_true",
        help="score text without FED (by default a text run stops at the start when FED's "
             "embedding model cannot be loaded)",
    )  # fmt: skip
    p.add_argument("--section", default=SECTION, help="the BENCHMARKS.md section to write")
    p.add_argument("--small", dest="smoke_test", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--png", help="the plot (default benchmarks/quality.png; none in a smoke test)")
    p.add_argument(
        "--carry-over", metavar="JSON",
        help="an earlier result of this benchmark: its oracle recipes this run does not run, and "
        "its text arm when this run has none, join the result (refused unless every seed's MLE "
        "curve is the same)",
    )  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    keep_freed_memory()  # G steps and samples in this process: see raygan.core.malloc
    plan = _plan(args)
    earlier = _earlier(args.carry_over) if args.carry_over else None  # a bad file fails first
    result = run_quality(plan)
    if earlier is not None:
        result = _carry_over(result, plan, earlier, args)
    result["machine"] = _machine(placement_settings(plan.train_overrides).use_gpu)
    png = args.png or (None if args.smoke_test else "benchmarks/quality.png")
    if png:
        # the image link of the BENCHMARKS.md section, which sits at the repository's root
        result["plot"] = os.path.relpath(Path(png).resolve(), ROOT)
        plot(result, png)
        print(f"wrote {png}")
    return result


BENCH = Benchmark(section=SECTION, default_json="benchmarks/quality.json", measure=measure,
                  render=markdown, add_arguments=add_arguments, out_is_json=False)  # fmt: skip


def _earlier(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RayganError(f"--carry-over {path}: not a readable result ({exc})") from None


def _carry_over(result: dict, plan: QualityPlan, earlier: dict, args) -> dict:
    from raygan.bench.quality_oracle import carry_over

    taken = []
    if "oracle" in result and "oracle" in earlier:
        result["oracle"], plan = carry_over(result["oracle"], plan, earlier["oracle"])
        result["plan"]["recipes"] = list(plan.recipes)
        taken += result["oracle"]["carried_over"]
    if "text" not in result and "text" in earlier:
        result["text"] = earlier["text"]
        for key in ("text_train", "text_test", "text_recipes", "text_max_len", "text_mle_epochs",
                    "text_hypotheses", "text_self_bleu", "text_temperatures", "fed_model"):
            result["plan"][key] = earlier["plan"][key]
        taken.append("the text arm")
    result["carried_over"] = {"from": args.carry_over, "command": earlier.get("command"),
                              "finished": earlier.get("finished"), "what": taken}  # fmt: skip
    return result


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
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise RayganError(f"--seeds wants integers, got {args.seeds!r}") from None
    plan = QualityPlan(
        out=args.out,
        oracle=not args.skip_oracle,
        oracle_path=args.oracle_path,
        text_train=text_train,
        text_test=text_test,
        seeds=seeds,
        recipes=tuple(r for r in args.recipes.split(",") if r),
        controls=not args.no_controls,
        mle_epochs=args.mle_epochs,
        eval_samples=args.eval_samples,
        text_recipes=tuple(r for r in args.text_recipes.split(",") if r),
        text_mle_epochs=args.text_mle_epochs,
        fed_model=args.fed_model,
        fed="off" if args.no_fed else "required",
    )
    if args.smoke_test:
        small = dict(SMALL)
        if not args.no_fed:  # a smoke test checks the pipeline: FED where the model loads
            small["fed"] = "if-available"
        if args.seeds != "0,1,2":
            small["seeds"] = seeds
        plan = dataclasses.replace(plan, **small)
    settings = {**plan.train_overrides, **parse_key_values(args.set)}
    placement_settings(settings)  # a key or value `raygan train` would refuse fails here, not later
    return dataclasses.replace(plan, train_overrides=settings)


def main(argv: list[str] | None = None) -> int:
    return harness_main(BENCH, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    sys.exit(main())
