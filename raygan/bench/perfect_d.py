"""The D-driven update with a perfect discriminator (scripts/bench_perfect_d.py).

On an oracle corpus the optimum of D's loss is known: its logit is log p_oracle(x) - log p_G(x)
for the G of the moment (Goodfellow et al. 2014). `TrueLogRatio` is that D. Run in place of a
trained D through the same G step (`raygan.core.gan.g_step`, a recipe's estimator, reward and
baseline), it bounds what a discriminator's reward can do for this update: a trained D gives at
most this much, and whatever it gives less is D's shortfall, not the update's.

The starts are the MLE checkpoints a `scripts/bench_quality.py` result started its recipes
from, and the distances are measured against that result's MLE curves, so the numbers sit
beside its table.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from raygan.bench.quality import finite_or_none
from raygan.core.errors import RayganError


class TrueLogRatio(nn.Module):
    """A discriminator at its optimum on the oracle: logit(x) = log p_oracle(x) - log p_G(x),
    for every prefix the completed sequence's (the estimators score prefixes by completions).
    G is the live generator, held outside the module's parameters."""

    def __init__(self, oracle: nn.Module, gen: nn.Module):
        super().__init__()
        self.oracle, self._gen = oracle, (gen,)
        self.head = nn.Linear(1, 1)  # where its outputs live (raygan.core.metrics reads it)

    def forward(self, tokens_BT: Tensor, lengths_B: Tensor | None = None):
        from raygan.core.metrics import sequence_nll

        with torch.no_grad():
            log_ratio_B = sequence_nll(self._gen[0], tokens_BT, lengths_B) - sequence_nll(
                self.oracle, tokens_BT, lengths_B
            )
        log_ratio_B = log_ratio_B.float()
        return log_ratio_B[:, None].expand(tokens_BT.shape), log_ratio_B


def starts_of(quality: dict[str, Any]) -> list[dict[str, Any]]:
    """Every MLE checkpoint a bench_quality result started a recipe from, per seed: its path,
    MLE step, the recipes that started there, and the seed's curves."""
    oracle = quality.get("oracle")
    if not oracle:
        raise RayganError("the quality result has no oracle benchmark (it ran with --skip-oracle)")
    found: dict[tuple[int, str], dict[str, Any]] = {}
    for seed, s in oracle["seeds"].items():
        for name, run in s["runs"].items():
            if name == "mle" or "/" in name or not run.get("start"):
                continue
            if (int(seed), run["start"]) not in found:
                meta = Path(run["start"]) / "checkpoint.json"
                if not meta.is_file():
                    raise RayganError(f"{meta}: the quality result's MLE checkpoint is gone "
                                      "(its --out directory holds the runs)")  # fmt: skip
                step = json.loads(meta.read_text())["step"]
                found[int(seed), run["start"]] = {
                    "seed": int(seed), "start": run["start"], "mle_step": step, "recipes": [],
                    "curve": s["curves"][str(step)], "envelope": s["envelope"],
                }  # fmt: skip
            found[int(seed), run["start"]]["recipes"].append(name)
    if not found:
        raise RayganError("no recipe of the quality result started from an MLE checkpoint")
    return sorted(found.values(), key=lambda f: (f["mle_step"], f["seed"]))


def run_update(
    start: dict[str, Any],
    *,
    oracle,
    test: tuple[Tensor, Tensor | None],
    train_BT: Tensor,
    batch: int,
    gan_cfg,
    steps: int,
    eval_every: int,
    eval_samples: int,
    curve_samples: int,
) -> dict[str, Any]:
    """`steps` G steps of `gan_cfg`'s update from `start`, each given a batch of `batch` rows of
    `train_BT` as the trainer gives it (a rollout update draws its own `batch` samples of G and
    uses the real rows for their shape only), D replaced by TrueLogRatio; NLL_oracle and
    NLL_test every `eval_every` steps (`curve_samples` samples) and at the end (`eval_samples`,
    the quality benchmark's own sampling seed), with its frontier distances."""
    from raygan.core.frontier import frontier_distance
    from raygan.core.gan import g_step
    from raygan.core.metrics import nll_oracle, nll_test
    from raygan.run.checkpoint import load_generator

    gen, _, _ = load_generator(start["start"])
    gen.train()
    perfect = TrueLogRatio(oracle, gen)
    optimizer = torch.optim.Adam(gen.parameters(), lr=gan_cfg.g_lr,
                                 betas=(gan_cfg.adam_beta1, 0.999))  # fmt: skip
    rng = torch.Generator().manual_seed(start["seed"] + 101)
    baseline_T = torch.full((train_BT.shape[1],), math.nan)

    def score(num: int, seed: int) -> dict[str, float]:
        return {"nll_oracle": nll_oracle(oracle, gen, num=num, seed=seed),
                "nll_test": nll_test(gen, *test)}  # fmt: skip

    curve = [{"step": 0, "train_s": 0.0, **score(curve_samples, 1)}]
    train_s = 0.0
    for step in range(1, steps + 1):
        rows = torch.randint(0, train_BT.shape[0], (batch,), generator=rng)
        began = time.perf_counter()
        g_step(gen, perfect, optimizer, train_BT[rows], cfg=gan_cfg, lr=gan_cfg.g_lr,
               generator=rng, baseline_T=baseline_T)  # fmt: skip
        train_s += time.perf_counter() - began
        if step % eval_every == 0 and step < steps:
            curve.append({"step": step, "train_s": train_s, **score(curve_samples, 1)})
    final = score(eval_samples, start["seed"] + 11)
    point = (final["nll_test"], final["nll_oracle"])
    start_points = [(p["nll_test"], p["nll_oracle"]) for p in start["curve"]]
    return {
        "seed": start["seed"], "recipes": start["recipes"], "mle_step": start["mle_step"],
        "start": start["start"], "steps": steps, "train_s": train_s, **final,
        "at_start": curve[0],
        "distance": finite_or_none(frontier_distance([tuple(p) for p in start["envelope"]], point)),
        "distance_to_start": finite_or_none(frontier_distance(start_points, point)),
        "curve": curve,
    }  # fmt: skip
