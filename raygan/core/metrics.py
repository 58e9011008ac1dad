"""Evaluation metrics: pure functions on the CPU, no Ray.

- NLL_oracle: per-token mean NLL (nats) of G's samples under the oracle (quality on synthetic data).
- NLL_test: per-token mean NLL of held-out real sequences under G, padding excluded (coverage).
- BLEU-n / Self-BLEU-n: see raygan.core.bleu (equal to nltk's definition, much faster).
- D's held-out accuracy: D's sequence logit on held-out real sequences and on fresh G samples
  (neither in D's training batches): the share of each on the right side of 0, their mean, and
  the pairwise accuracy (AUC: how often a real outscores a fake), which is the accuracy of a
  relativistic D (rsgan), whose logits have no fixed threshold.
- D's log-ratio correlation (oracle data): the rank correlation, over G's samples, of D's logit
  with log p_oracle(x) - log p_G(x), the logit of a D at its optimum: whether D's reward ranks
  G's samples the way the truth does, which accuracy alone does not show.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from raygan.core.models import Generator, Oracle, length_mask, unwrap
from raygan.core.sampler import Samples


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


@torch.no_grad()
def sequence_logits(
    disc: nn.Module, tokens_BT: Tensor, lengths_B: Tensor | None = None, chunk: int = 1000
) -> Tensor:
    """D's logit per sequence, in eval mode (no dropout), `chunk` sequences at a time."""
    bare = unwrap(disc)
    was_training = bare.training
    bare.eval()
    device = bare.head.weight.device
    parts = []
    for start in range(0, tokens_BT.shape[0], chunk):
        rows = slice(start, start + chunk)
        lengths = None if lengths_B is None else lengths_B[rows].to(device)
        parts.append(bare(tokens_BT[rows].to(device), lengths)[1].float().cpu())
    bare.train(was_training)
    return torch.cat(parts)


def pairwise_accuracy(real_N: Tensor, fake_M: Tensor) -> float:
    """P(a real logit > a fake logit), ties counting one half: the ROC AUC."""
    real_sorted = real_N.double().sort().values
    below = torch.searchsorted(real_sorted, fake_M.double(), right=False)
    at_or_below = torch.searchsorted(real_sorted, fake_M.double(), right=True)
    above = real_N.numel() - at_or_below
    ties = at_or_below - below
    return float((above + 0.5 * ties).sum() / (real_N.numel() * fake_M.numel()))


def heldout_d_accuracy(
    disc: nn.Module,
    real_BT: Tensor,
    real_lengths_B: Tensor | None,
    fake_BT: Tensor,
    fake_lengths_B: Tensor | None,
) -> dict[str, float]:
    """d_acc_real, d_acc_fake, d_acc (their mean) and d_auc on sequences D never trained on."""
    real_N = sequence_logits(disc, real_BT, real_lengths_B)
    fake_M = sequence_logits(disc, fake_BT, fake_lengths_B)
    acc_real, acc_fake = float((real_N > 0).float().mean()), float((fake_M < 0).float().mean())
    return {
        "d_acc_real": acc_real,
        "d_acc_fake": acc_fake,
        "d_acc": (acc_real + acc_fake) / 2,
        "d_auc": pairwise_accuracy(real_N, fake_M),
    }


def d_accuracy_key(loss: str) -> str:
    """Which held-out accuracy says how well D separates: the pairwise one for losses whose
    logits have no fixed threshold (rsgan compares real with fake; wgan-gp is unbounded)."""
    return "d_auc" if loss in ("rsgan", "wgan-gp") else "d_acc"


def training_overlap(
    samples: list[list[int]], training: list[list[int]], n: int = 4
) -> dict[str, float]:
    """How much of G's output is copied from the training set: the share of samples identical
    to a training sequence, and the share of their n-grams that occur in it. Compared with the
    same numbers for held-out real sequences (which no model saw), a higher share is copying:
    the oracle scores a memorised training sequence as well as any real one, so NLL_oracle
    alone would count memorisation as quality."""
    whole = {tuple(row) for row in training}
    grams = _ngram_set(training, n)
    sample_grams = [tuple(row[i : i + n]) for row in samples for i in range(len(row) - n + 1)]
    return {
        "copied": sum(tuple(row) in whole for row in samples) / max(len(samples), 1),
        f"train_{n}grams": sum(g in grams for g in sample_grams) / max(len(sample_grams), 1),
    }


def novel_rows(samples: list[list[int]], training: list[list[int]], n: int = 4) -> list[bool]:
    """Per sample: whether none of its n-grams occurs in the training set. Scoring only these
    separates a model that puts more mass on training-set phrases (which the oracle scores
    well, memorised or not) from one that is better where it writes something new."""
    grams = _ngram_set(training, n)
    return [all(tuple(row[i : i + n]) not in grams for i in range(len(row) - n + 1))
            for row in samples]  # fmt: skip


def _ngram_set(rows: list[list[int]], n: int) -> set[tuple[int, ...]]:
    return {tuple(row[i : i + n]) for row in rows for i in range(len(row) - n + 1)}


def mean_token_nll(
    model: nn.Module, tokens_BT: Tensor, lengths_B: Tensor | None = None, temperature: float = 1.0
) -> float:
    """Per-token mean NLL of `tokens_BT` under `model` (its softmax at `temperature`), averaged
    over all non-padding tokens."""
    total = length_mask(lengths_B, tokens_BT.shape[1], tokens_BT).sum()
    return float(sequence_nll(model, tokens_BT, lengths_B, temperature).sum().cpu() / total)


def sequence_nll(
    model: nn.Module, tokens_BT: Tensor, lengths_B: Tensor | None = None, temperature: float = 1.0
) -> Tensor:
    """Each sequence's NLL (B,) under `model` (its softmax at `temperature`), in float64, padding
    excluded; scored in eval mode, the model's mode restored."""
    bare: Generator = unwrap(model)
    was_training = bare.training
    bare.eval()
    tokens_BT = tokens_BT.to(bare.head.weight.device)
    if lengths_B is not None:
        lengths_B = lengths_B.to(tokens_BT.device)
    nll_B = bare.token_nll(tokens_BT, lengths_B, temperature=temperature).double().sum(1)
    bare.train(was_training)
    return nll_B


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


def rank_correlation(a_N: Tensor, b_N: Tensor) -> float:
    """Spearman's rank correlation of two score vectors (ties broken by position: for
    continuous scores such as logits and log-likelihoods)."""
    ranks = torch.stack([a_N.argsort().argsort(), b_N.argsort().argsort()]).double()
    return float(torch.corrcoef(ranks)[0, 1])


@torch.no_grad()
def d_log_ratio_correlation(
    disc: nn.Module, gen: nn.Module, oracle: Oracle, samples: Samples
) -> float:
    """Rank correlation, over G's `samples`, of D's sequence logit with the true log-ratio
    log p_oracle(x) - log p_G(x) (what the logit of a D at its optimum equals, and the reward
    whose REINFORCE gradient is -KL(G || oracle)'s). Near 0: D's reward does not tell G's better
    samples from its worse ones, whatever its accuracy."""
    tokens_BT, lengths_B = samples.tokens_BT, samples.lengths_B
    nll_g_B, nll_oracle_B = (sequence_nll(m, tokens_BT, lengths_B) for m in (gen, oracle))
    return rank_correlation(sequence_logits(disc, tokens_BT, lengths_B), nll_g_B - nll_oracle_B)


def frechet_distance(a_ND: np.ndarray, b_MD: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the rows.

    tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric
    A^(1/2) S_b A^(1/2) (A = S_a), which avoids a non-symmetric matrix square root.
    """
    a_ND, b_MD = np.asarray(a_ND, np.float64), np.asarray(b_MD, np.float64)
    if a_ND.ndim != 2 or b_MD.ndim != 2 or a_ND.shape[1] != b_MD.shape[1]:
        raise ValueError(
            f"need two (rows, dim) arrays of one dim, got {a_ND.shape} and {b_MD.shape}"
        )
    if len(a_ND) < 2 or len(b_MD) < 2:
        raise ValueError("need at least 2 rows on each side to estimate a covariance")
    mu_a, mu_b = a_ND.mean(0), b_MD.mean(0)
    cov_a, cov_b = (
        np.atleast_2d(np.cov(a_ND, rowvar=False)),
        np.atleast_2d(np.cov(b_MD, rowvar=False)),
    )
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
