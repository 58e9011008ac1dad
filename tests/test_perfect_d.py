"""The perfect discriminator of scripts/bench_perfect_d.py: its logit is the true log-ratio,
and the recipes' G update driven by it moves G toward the oracle."""

from __future__ import annotations

import math

import torch

from raygan.bench.perfect_d import TrueLogRatio
from raygan.core.config import GANConfig
from raygan.core.gan import g_step
from raygan.core.metrics import sample_tokens, sequence_nll
from raygan.core.models import Generator, Oracle
from tests.conftest import TINY


def _oracle() -> Oracle:
    return Oracle.random(vocab_size=TINY.vocab_size, max_len=TINY.max_len, embed_dim=8,
                         hidden_dim=8, seed=3)  # fmt: skip


def test_its_logit_is_the_log_ratio_of_the_live_generator_and_holds_no_g_weights():
    oracle = _oracle()
    torch.manual_seed(0)
    gen = Generator(TINY)
    perfect = TrueLogRatio(oracle, gen)
    tokens = sample_tokens(gen, 50, seed=2).tokens_BT
    prefix_BT, seq_B = perfect(tokens)
    truth = sequence_nll(gen, tokens) - sequence_nll(oracle, tokens)
    assert torch.allclose(seq_B.double(), truth, atol=1e-4)
    assert prefix_BT.shape == tokens.shape and torch.equal(prefix_BT[:, 0], seq_B)
    mine = {id(p) for p in perfect.parameters()}
    assert mine and not mine & {id(p) for p in gen.parameters()}  # D's optimizer never moves G
    with torch.no_grad():  # G changes: the logit follows the live G
        gen.head.bias.add_(torch.linspace(-2, 2, TINY.vocab_size))
    assert not torch.allclose(perfect(tokens)[1], seq_B)


def test_the_ratio_update_driven_by_it_lowers_the_reverse_kl():
    oracle = _oracle()
    torch.manual_seed(0)
    gen = Generator(TINY)
    cfg = GANConfig(estimator="rollout", reward="logit", reward_baseline="ema", rollout_num=2,
                    g_lr=1e-2)  # fmt: skip

    def reverse_kl() -> float:  # E_G[log p_G(x) - log p_oracle(x)], per sequence
        tokens = sample_tokens(gen, 4000, seed=9).tokens_BT
        return float((sequence_nll(oracle, tokens) - sequence_nll(gen, tokens)).mean())

    before = reverse_kl()
    perfect = TrueLogRatio(oracle, gen)
    optimizer = torch.optim.Adam(gen.parameters(), lr=cfg.g_lr)
    baseline_T = torch.full((TINY.max_len,), math.nan)
    rng = torch.Generator().manual_seed(1)
    batch = torch.zeros(32, TINY.max_len, dtype=torch.long)
    for _ in range(40):
        g_step(gen, perfect, optimizer, batch, cfg=cfg, lr=cfg.g_lr, generator=rng,
               baseline_T=baseline_T)  # fmt: skip
    after = reverse_kl()
    assert after < before - 0.2, (before, after)
