"""Evaluation metrics: pure functions on the CPU, no Ray.

- NLL_oracle: per-token mean NLL (nats) of G's samples under the oracle (quality on synthetic data).
- NLL_test: per-token mean NLL of held-out real sequences under G, padding excluded (coverage).
- BLEU-n / Self-BLEU-n: see raygan.bleu (equal to nltk's definition, much faster).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raygan.models import Generator, Oracle, Samples, length_mask, unwrap


def sample_tokens(
    gen: nn.Module, num: int, *, seed: int = 0, temperature: float = 1.0, batch_size: int = 2000
) -> Samples:
    """`num` samples from G with a fixed seed, drawn `batch_size` at a time."""
    bare: Generator = unwrap(gen)
    was_training = bare.training
    bare.eval()
    rng = torch.Generator(device=bare.head.weight.device).manual_seed(seed)
    parts = [
        bare.sample(min(batch_size, num - start), generator=rng, temperature=temperature)
        for start in range(0, num, batch_size)
    ]
    bare.train(was_training)
    z = None if parts[0].z_BZ is None else torch.cat([p.z_BZ for p in parts])
    return Samples(
        torch.cat([p.tokens_BT for p in parts]), torch.cat([p.lengths_B for p in parts]), z
    )


def mean_token_nll(
    model: nn.Module, tokens_BT: Tensor, lengths_B: Tensor | None = None, temperature: float = 1.0
) -> float:
    """Per-token mean NLL of `tokens_BT` under `model` (its softmax at `temperature`), averaged
    over all non-padding tokens."""
    bare: Generator = unwrap(model)
    was_training = bare.training
    bare.eval()
    tokens_BT = tokens_BT.to(bare.head.weight.device)
    if lengths_B is not None:
        lengths_B = lengths_B.to(tokens_BT.device)
    nll_BT = bare.token_nll(tokens_BT, lengths_B, temperature=temperature)
    bare.train(was_training)
    total = length_mask(lengths_B, tokens_BT.shape[1], tokens_BT).sum()
    return float(nll_BT.double().sum() / total)


def nll_oracle(
    oracle: Oracle, gen: nn.Module, *, num: int = 10_000, seed: int = 0, temperature: float = 1.0
) -> float:
    """NLL_oracle: draw `num` sequences from G and score them under the oracle."""
    samples = sample_tokens(gen, num, seed=seed, temperature=temperature)
    return mean_token_nll(oracle, samples.tokens_BT)


def nll_test(
    gen: nn.Module, tokens_BT: Tensor, lengths_B: Tensor | None = None, temperature: float = 1.0
) -> float:
    """NLL_test: held-out real sequences under G (at `temperature`, the distribution G samples
    from there); padding after EOS is not counted."""
    return mean_token_nll(gen, tokens_BT, lengths_B, temperature)
