"""A recipe's G update with a perfect discriminator, from the quality benchmark's MLE starts;
JSON + a BENCHMARKS.md table.

    python scripts/bench_perfect_d.py --quality-json benchmarks/quality_recipes.json \
        --markdown BENCHMARKS.md
    python scripts/bench_perfect_d.py --from-json benchmarks/perfect_d.json --markdown BENCHMARKS.md

On the oracle the optimal D's logit is log p_oracle(x) - log p_G(x) (raygan.bench.perfect_d).
Each MLE checkpoint a `scripts/bench_quality.py` result started its recipes from gets `--steps`
G steps of `--recipe`'s update (estimator, reward, baseline, optimizer) with that D in place of
a trained one, in one process; distances are against the same result's MLE curves, so the
table reads beside its own. `--smoke-test` needs a quality result of its own smoke test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raygan.bench.harness import Benchmark, machine_line, main  # noqa: E402
from raygan.bench.markdown import markdown_table  # noqa: E402
from raygan.bench.quality import mean_std  # noqa: E402
from raygan.bench.quality_report import _pm  # noqa: E402
from raygan.core.errors import RayganError  # noqa: E402


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quality-json", default="benchmarks/quality_recipes.json",
                        help="a bench_quality.py result whose runs are still in its --out")
    parser.add_argument("--recipe", default="ratio", help="whose G update runs (default ratio)")
    parser.add_argument("--steps", type=int, default=100,
                        help="G steps from each start (default 100: `ratio`'s adv_steps)")
    parser.add_argument("--eval-every", type=int, default=25)


def measure(args: argparse.Namespace) -> dict:
    import dataclasses

    import torch

    from raygan.bench.perfect_d import run_update, starts_of
    from raygan.data.read import load_oracle, read_split
    from raygan.run.train import resolve_config

    path = Path(args.quality_json)
    if not path.is_file():
        raise RayganError(f"{path}: no such quality result (run scripts/bench_quality.py first)")
    quality = json.loads(path.read_text())
    starts = starts_of(quality)
    data_dir = Path(quality["plan"]["out"]) / "oracle_data"
    oracle = load_oracle(str(data_dir))
    test_NT, test_len_N = read_split(str(data_dir), "test")
    train_NT, _ = read_split(str(data_dir), "train")
    cfg = resolve_config(str(data_dir), {"recipe": args.recipe})
    gan_cfg, batch = cfg.gan, cfg.schedule.batch_size
    if gan_cfg.estimator != "rollout":
        raise RayganError(
            f"recipe {args.recipe!r} uses the {gan_cfg.estimator} estimator; the optimal D "
            "scores whole sequences, so it drives rollout updates only"
        )
    small = args.smoke_test
    steps, eval_every = (3, 2) if small else (args.steps, args.eval_every)
    samples = quality["plan"]["eval_samples"]
    test = (torch.as_tensor(test_NT), torch.as_tensor(test_len_N))
    options = dict(oracle=oracle, test=test, train_BT=torch.as_tensor(train_NT), batch=batch,
                   gan_cfg=gan_cfg, steps=steps,
                   eval_every=eval_every, eval_samples=samples,
                   curve_samples=min(2000, samples))  # fmt: skip
    runs = [run_update(start, **options) for start in starts]
    summary = {}
    for step in sorted({r["mle_step"] for r in runs}):
        mine = [r for r in runs if r["mle_step"] == step]
        recipes = sorted({name for r in mine for name in r["recipes"]})
        trained = quality["oracle"]["summary"]
        summary[str(step)] = {
            "recipes": recipes,
            **{k: mean_std([r[k] for r in mine]) for k in
               ("nll_oracle", "nll_test", "distance", "distance_to_start", "train_s")},
            "start_nll_oracle": mean_std([r["at_start"]["nll_oracle"] for r in mine]),
            "start_nll_test": mean_std([r["at_start"]["nll_test"] for r in mine]),
            "trained_d": {name: {"distance_to_start": trained[name]["distance_to_start"],
                                 "d_log_ratio": trained[name].get("d_log_ratio")}
                          for name in recipes if name in trained},
        }  # fmt: skip
    return {"quality_json": str(path), "recipe": args.recipe, "steps": steps, "batch": batch,
            "eval_samples": samples, "gan": dataclasses.asdict(gan_cfg), "runs": runs,
            "summary": summary}  # fmt: skip


def render(result: dict) -> str:
    gan = result["gan"]
    rows, trained_rows = [], []
    for step, s in result["summary"].items():
        rows.append([
            f"MLE step {step} ({', '.join(s['recipes'])})", s["nll_oracle"]["n"],
            f"{_pm(s['start_nll_oracle'])} → {_pm(s['nll_oracle'])}",
            f"{_pm(s['start_nll_test'])} → {_pm(s['nll_test'])}",
            _pm(s["distance"]), _pm(s["distance_to_start"]), _pm(s["train_s"], 0),
        ])  # fmt: skip
        for name, t in s["trained_d"].items():
            trained_rows.append([f"`{name}` (trained D), from MLE step {step}",
                                 _pm(t["distance_to_start"]),
                                 _pm(t["d_log_ratio"], 2)])  # fmt: skip
    lines = [
        f"**`{result['recipe']}`'s G update with a perfect D** (logit = log p_oracle(x) − log "
        f"p_G(x) of the live G): estimator {gan['estimator']}, reward {gan['reward']}, baseline "
        f"{gan['reward_baseline']}, {gan['rollout_num']} rollouts, Adam {gan['g_lr']:g}, batch "
        f"{result['batch']}; {result['steps']} G steps from each MLE checkpoint the quality result "
        f"(`{result['quality_json']}`) started a recipe from, one process. NLL_oracle on "
        f"{result['eval_samples']:,} samples at T=1 and NLL_test on the held-out set, start → "
        "end; distances as in that table (against MLE's curve, and against the start's own "
        "temperature curve: negative is below it, better than any temperature of the start).",
        "",
        markdown_table(
            ["start", "seeds", "NLL_oracle", "NLL_test", "distance", "to start", "train s"], rows
        ),
        "",
        "The recipes that started there, with their trained D (the quality table's numbers):",
        "",
        markdown_table(["run", "to start", "D ~ log-ratio"], trained_rows),
        "",
        f"Command: `{result['command']}` ({machine_line(result['machine'])}, "
        f"{result['finished']}).",
    ]
    return "\n".join(lines)


BENCH = Benchmark(section="perfect-d", default_json="benchmarks/perfect_d.json", measure=measure,
                  render=render, add_arguments=add_arguments)  # fmt: skip

if __name__ == "__main__":
    sys.exit(main(BENCH, __doc__.split("\n")[0]))
