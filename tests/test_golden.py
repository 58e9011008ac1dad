"""Pinned numbers of the training steps, and the Ray-free core: what makes a refactor safe.

tests/golden/steps.json holds, for each estimator, the stats of a few MLE, D and adversarial
steps of the tiny text model at a fixed seed and a fingerprint of G's and D's parameters after
them. A change to any step's arithmetic (or to the weights' initialisation) moves them; a
refactor that only moves code does not. Regenerate on purpose, and say why in the commit:

    python tests/test_golden.py --write
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "steps.json"
ESTIMATORS = ("gumbel", "rollout", "dense", "constant")
# What must import neither ray nor anything that does: every module of raygan.core (found on
# disk, so a new one is covered), and what Ray's workers run that never needs Ray itself.
CORE = sorted(p.stem for p in (Path(__file__).parents[1] / "raygan/core").glob("[!_]*.py"))
RAY_FREE = [f"core.{m}" for m in CORE] + [
    "data.read", "data.tokenizer", "run.checkpoint", "run.loop", "serve.sampling"]  # fmt: skip


def run_steps(estimator: str) -> dict:
    from raygan.core.config import Config, apply_overrides
    from raygan.core.gan import adversarial_step, d_step, mle_step
    from raygan.run.loop import build_models

    cfg = apply_overrides(Config(), {
        "vocab_size": 12, "max_len": 6, "g_embed_dim": 8, "g_hidden_dim": 8, "d_embed_dim": 8,
        "d_hidden_dim": 8, "d_dropout": 0.0, "start_id": 1, "eos_id": 2, "pad_id": 0,
        "estimator": estimator, "rollout_num": 2, "batch_size": 8, "seed": 3,
    })  # fmt: skip
    gen, disc, opt_mle, opt_g, opt_d = build_models(cfg)
    data = torch.Generator().manual_seed(11)

    def batches():
        while True:
            lengths_B = torch.randint(2, 7, (8,), generator=data)
            tokens_BT = torch.randint(3, 12, (8, 6), generator=data)
            for row, n in enumerate(lengths_B.tolist()):
                tokens_BT[row, n - 1] = 2  # EOS
                tokens_BT[row, n:] = 0  # PAD
            yield tokens_BT, lengths_B

    real, rng = batches(), torch.Generator().manual_seed(5)
    stats = [mle_step(gen, opt_mle, *next(real), lr=cfg.gan.mle_lr) for _ in range(3)]
    stats += [d_step(gen, disc, opt_d, *next(real), cfg=cfg.gan, lr=cfg.gan.disc_lr, generator=rng)
              for _ in range(2)]  # fmt: skip
    baseline_T = torch.full((6,), float("nan")) if cfg.gan.reward_baseline else None
    stats += [adversarial_step(gen, disc, opt_g, opt_d, real, cfg=cfg.gan, g_lr=cfg.gan.g_lr,
                               d_lr=cfg.gan.disc_lr, d_steps=2, beta=2.0, generator=rng,
                               baseline_T=baseline_T) for _ in range(3)]  # fmt: skip
    return {
        "stats": [{k: round(float(v), 7) for k, v in sorted(s.items())} for s in stats],
        "generator": _fingerprint(gen),
        "discriminator": _fingerprint(disc),
    }


def _fingerprint(model: torch.nn.Module) -> list[float]:
    """Sum, sum of squares and a position-weighted sum of every parameter, in order."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64) / flat.numel()
    return [round(float(x), 9) for x in (flat.sum(), (flat**2).sum(), (flat * weights).sum())]


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_steps_match_the_pinned_numbers(estimator):
    golden = json.loads(GOLDEN.read_text())[estimator]
    now = run_steps(estimator)
    assert [sorted(s) for s in now["stats"]] == [sorted(s) for s in golden["stats"]]
    for got, want in zip(now["stats"], golden["stats"], strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    for net in ("generator", "discriminator"):
        assert now[net] == pytest.approx(golden[net], rel=1e-5, abs=1e-7)


def test_the_core_imports_no_ray():
    assert {"config", "models", "sampler", "gan", "metrics"} <= set(CORE)
    script = "import sys\n" + "".join(f"import raygan.{m}\n" for m in RAY_FREE) + (
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.write_text(json.dumps({e: run_steps(e) for e in ESTIMATORS}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
