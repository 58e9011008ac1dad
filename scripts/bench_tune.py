"""PBT against the same trials with fixed configurations, at equal compute, on the SeqGAN oracle,
ranked by the frontier objective (how far below MLE's temperature curve a trial has moved).

    python scripts/bench_tune.py --markdown BENCHMARKS.md     # ~35 minutes on 2 CPUs
    python scripts/bench_tune.py --smoke-test                 # tiny sizes, checks the script
    python scripts/bench_tune.py --adv-steps 200 --perturbation-interval 50 \
        --json benchmarks/tune_200.json --section tune-200 --markdown BENCHMARKS.md   # ~33 minutes

1. prepare: 10,000 training and 2,000 held-out samples of SeqGAN's oracle
   (../shared/data/seqgan_oracle/target_params.npz; a seeded random oracle when it is absent);
2. pretrain: under the space's recipe (`nce`, the recipe whose G moves below MLE's curve),
   MLE for the epochs where held-out NLL is best, then the recipe's D pretraining, in one
   process: the shared starting point (searching the G/D balance only matters in adversarial
   training);
3. fixed: `raygan tune --scheduler none`: T trials drawn from tune_spaces/pbt_oracle.yaml (the
   recipe's keys, then the searched g_lr, d_lr_ratio, d_steps and reward), A adversarial steps
   each from the pretrained checkpoint, configurations never change;
4. pbt: the same command with PBT. The same seed draws the same T initial configurations, so the
   two arms differ only in exploit/explore. Both spend T x A generator steps.
Reported per arm: the best frontier_distance any trial reached (the checkpoint exported to
best/), the best final one, the NLL_oracle / NLL_test behind them, exploits, wall time and the
command; and the starting MLE's own temperatures on the objective (0 on its curve, above 0
where dominated: a temperature knob, which wins NLL_oracle alone, cannot win it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from raygan.bench.harness import Benchmark, main
from raygan.bench.markdown import markdown_table
from raygan.data.prepare import prepare_oracle
from raygan.run.checkpoint import copy_checkpoint
from raygan.run.loop import RunSpec, WorkerContext, train_loop
from raygan.run.train import resolve_config
from raygan.run.tune import run_tune
from raygan.run.tune_space import load_space

REPO = Path(__file__).resolve().parents[1]
SEQGAN_ORACLE = REPO.parent / "shared/data/seqgan_oracle/target_params.npz"
SPACE = REPO / "tune_spaces/pbt_oracle.yaml"


@dataclasses.dataclass(frozen=True)
class Sizes:
    num_train: int = 10_000
    num_test: int = 2_000
    mle_epochs: int = 5  # the best held-out NLL on this oracle (BENCHMARKS.md, quality)
    d_pretrain_steps: int = 1000
    trials: int = 4
    adv_steps: int = 100
    report_every: int = 25
    perturbation_interval: int = 25
    eval_samples: int = 2000
    model: tuple = ()  # extra overrides (the smoke test's tiny nets)


FULL = Sizes()
SMOKE = Sizes(
    num_train=256, num_test=64, mle_epochs=2, d_pretrain_steps=2, trials=2, adv_steps=8,
    report_every=2, perturbation_interval=4, eval_samples=32,
    model=(("g_embed_dim", 8), ("g_hidden_dim", 8), ("d_embed_dim", 8), ("d_hidden_dim", 8),
           ("batch_size", 8), ("rollout_num", 2)),
)  # fmt: skip


def prepare(s: Sizes, work: Path, smoke: bool) -> tuple[str, str]:
    data = work / "data"
    if SEQGAN_ORACLE.is_file() and not smoke:
        prepare_oracle(str(data), oracle="seqgan", oracle_path=str(SEQGAN_ORACLE),
                       num_samples=s.num_train, num_test=s.num_test, progress=False)  # fmt: skip
        return str(data), "SeqGAN oracle"
    prepare_oracle(str(data), oracle="random", num_samples=s.num_train, num_test=s.num_test,
                   vocab_size=50 if smoke else 5000, max_len=8 if smoke else 20, progress=False)  # fmt: skip
    return str(data), "random oracle (seed 0)"


def space_recipe() -> str:
    """The recipe every trial starts from: the shipped space's `fixed.recipe`."""
    import yaml

    return yaml.safe_load(SPACE.read_text())["fixed"]["recipe"]


def pretrain(s: Sizes, data: str, work: Path, recipe: str) -> dict:
    """MLE + the recipe's D pretraining at world size 1 (its D: the trials skip D pretraining);
    the last checkpoint becomes the trials' init_from."""
    batch = dict(s.model).get("batch_size", 64)
    mle_steps = s.mle_epochs * (s.num_train // batch)
    config = resolve_config(data, {
        "recipe": recipe, **dict(s.model), "mle_steps": mle_steps,
        "d_pretrain_steps": s.d_pretrain_steps, "adv_steps": 0, "eval_every": mle_steps,
        "checkpoint_every": mle_steps + s.d_pretrain_steps, "eval_samples": s.eval_samples,
    })  # fmt: skip
    out = work / "pretrain"
    last: dict = {}

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        copy_checkpoint(checkpoint_dir, out)
        last.update(metrics)

    started = time.perf_counter()
    train_loop(
        RunSpec(config=config, data_dir=data, run_dir=None),
        WorkerContext(report=report),
    )
    return {"checkpoint": str(out), "nll_oracle": last["nll_oracle"], "mle_steps": mle_steps,
            "nll_test": last["nll_test"], "d_acc": last.get("d_acc"),
            "wall_s": time.perf_counter() - started}  # fmt: skip


def space_file(s: Sizes, work: Path) -> str:
    import yaml

    space = yaml.safe_load(SPACE.read_text())
    space.update(trials=s.trials, report_every=s.report_every,
                 perturbation_interval=s.perturbation_interval)  # fmt: skip
    space["fixed"].update(adv_steps=s.adv_steps, eval_samples=s.eval_samples)
    path = work / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return str(path)


def arm(name: str, space: str, data: str, work: Path, overrides: dict) -> dict:
    out = work / name
    scheduler = "pbt" if name == "pbt" else "none"
    command = ["raygan", "tune", "--space", "SPACE", "--data", "DATA", "--out", name,
               "--scheduler", scheduler,
               *(f"{k}={'PRETRAINED' if k == 'init_from' else v}" for k, v in overrides.items())]  # fmt: skip
    started = time.perf_counter()
    summary = run_tune(space, data, str(out), overrides=overrides, scheduler=scheduler, fresh=True,
                       log=lambda *_: None, progress=False)  # fmt: skip
    wall = time.perf_counter() - started
    trials = summary["trials"]
    best_meta = json.loads((out / "best" / "checkpoint.json").read_text())["metrics"]
    return {
        "command": shlex.join(command),
        "wall_s": wall,
        "best_metric": summary["best"]["metric"],
        "best_nll_oracle": best_meta["nll_oracle"],
        "best_nll_test": best_meta["nll_test"],
        "best_step": summary["best"]["step"],
        "best_config": summary["best"]["config"],
        "best_final_metric": min(t["final_metric"] for t in trials),
        "exploits": summary["exploits"],
        "trials": trials,
        "frontier": json.loads((out / "frontier.json").read_text()),
        "results_md": (out / "results.md").read_text(),
    }


def run(s: Sizes, work: Path, smoke: bool) -> dict:
    import ray

    from raygan.run.ray_env import ray_environment

    torch.set_num_threads(1)
    space = space_file(s, work)
    load_space(space)  # --trials/--adv-steps/--perturbation-interval checked before pretraining
    data, oracle = prepare(s, work, smoke)
    recipe = space_recipe()
    pre = pretrain(s, data, work, recipe)
    print(f"pretrained: NLL_oracle {pre['nll_oracle']:.4f} after {pre['mle_steps']} MLE steps "
          f"({pre['wall_s']:.0f} s)", flush=True)  # fmt: skip
    ray_environment()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    overrides = {**dict(s.model), "init_from": pre["checkpoint"], "d_pretrain_steps": 0}
    try:
        arms = {}
        for name in ("fixed", "pbt"):
            arms[name] = arm(name, space, data, work, overrides)
            print(f"{name}: best frontier_distance {arms[name]['best_metric']:+.4f}, "
                  f"{arms[name]['wall_s']:.0f} s", flush=True)  # fmt: skip
    finally:
        ray.shutdown()
    return {
        "oracle": oracle,
        "sizes": dataclasses.asdict(s),
        "recipe": recipe,
        "pretrain": pre,
        "arms": arms,
        "space": SPACE.name,
    }


def report_text(result: dict) -> str:
    s, pre = result["sizes"], result["pretrain"]
    rows = [
        [name, f"{a['best_metric']:+.4f}", f"{a['best_nll_oracle']:.4f} / {a['best_nll_test']:.4f}",
         a["best_step"], f"{a['best_final_metric']:+.4f}", a["exploits"], f"{a['wall_s']:.0f}",
         f"`{a['command']}`"]
        for name, a in result["arms"].items()
    ]  # fmt: skip
    header = ["arm", "best frontier_distance", "its NLL_oracle / NLL_test", "at step",
              "best final frontier_distance", "exploits", "wall s", "command"]  # fmt: skip
    fixed, pbt = result["arms"]["fixed"], result["arms"]["pbt"]
    delta = pbt["best_metric"] - fixed["best_metric"]
    delta_final = pbt["best_final_metric"] - fixed["best_final_metric"]
    curve = pbt["frontier"]
    sharpest = min(zip(curve["temperatures"], curve["points"], strict=True), key=lambda tp: tp[1][1])
    wins = sharpest[1][1] < min(a["best_nll_oracle"] for a in result["arms"].values())
    return "\n".join([
        f"{result['oracle']}; {s['trials']} trials x {s['adv_steps']} adversarial steps per arm, "
        f"each trial the recipe `{result['recipe']}` with g_lr, d_lr_ratio, d_steps and reward "
        f"searched, a report every {s['report_every']} steps, PBT decisions "
        f"every {s['perturbation_interval']}; {s['eval_samples']} evaluation samples. Both arms "
        f"start from one MLE-pretrained G ({pre['mle_steps']} steps: NLL_oracle "
        f"{pre['nll_oracle']:.4f}, NLL_test {pre['nll_test']:.4f}) with the recipe's D pretrained "
        f"({s['d_pretrain_steps']} steps) and draw the same initial configurations. Objective: "
        f"frontier_distance, NLL_oracle minus the starting G's temperature curve at the trial's "
        f"NLL_test (lower is better; {len(curve['temperatures'])} temperatures "
        f"{curve['temperatures'][0]:g}-{curve['temperatures'][-1]:g}). On it every temperature "
        f"of the starting G scores 0 or more; by NLL_oracle alone its lowest point, T={sharpest[0]:g} "
        f"({sharpest[1][1]:.3f} at NLL_test {sharpest[1][0]:.3f}), "
        f"{'would rank above' if wins else 'does not beat'} both arms' best checkpoints.",
        "",
        markdown_table(header, rows),
        "",
        f"PBT minus fixed (negative: PBT better): best final frontier_distance "
        f"{delta_final:+.4f}; best checkpoint's {delta:+.4f}.",
        "",
        "<details><summary>per-trial results (PBT arm)</summary>\n",
        pbt["results_md"],
        "</details>",
    ])  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, help=f"trials per arm (default {FULL.trials})")
    parser.add_argument("--adv-steps", type=int,
                        help=f"adversarial steps per trial (default {FULL.adv_steps})")  # fmt: skip
    parser.add_argument("--perturbation-interval", type=int,
                        help=f"steps between PBT decisions (default {FULL.perturbation_interval}; "
                             f"a multiple of the report interval, {FULL.report_every})")  # fmt: skip
    parser.add_argument("--section", help="the BENCHMARKS.md section to write (default tune)")


def measure(args: argparse.Namespace) -> dict:
    given = {"trials": args.trials, "adv_steps": args.adv_steps,
             "perturbation_interval": args.perturbation_interval}  # fmt: skip
    sizes = dataclasses.replace(SMOKE if args.smoke_test else FULL,
                                **{k: v for k, v in given.items() if v is not None})  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="raygan-bench-tune-"))
    try:
        return run(sizes, work, args.smoke_test)
    finally:
        shutil.rmtree(work, ignore_errors=True)


BENCH = Benchmark(section="tune", default_json="benchmarks/tune.json", measure=measure,
                  render=report_text, add_arguments=add_arguments)  # fmt: skip

if __name__ == "__main__":
    sys.exit(main(BENCH, __doc__.split("\n")[0]))
