"""The frontier (MLE's temperature curve) and a model's distance to it; D's held-out accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from raygan.core.frontier import curve_at, curve_gap, dominated, frontier_distance, pareto_front
from raygan.core.metrics import (
    d_accuracy_key,
    d_log_ratio_correlation,
    heldout_d_accuracy,
    novel_rows,
    pairwise_accuracy,
    rank_correlation,
    sample_tokens,
    sequence_nll,
)
from raygan.core.models import Discriminator, Generator, Oracle
from tests.conftest import TINY

# (NLL_test, NLL_oracle) of an MLE at T = 0.8, 0.9, 1.0, 1.1, 1.2: NLL_test is lowest at 1.1, so
# T=1.2 is dominated by T=1.1 and is no part of the curve.
SWEEP = [(7.8, 8.8), (7.7, 9.2), (7.6, 9.5), (7.55, 9.7), (7.56, 9.9)]


def test_the_front_keeps_only_undominated_points():
    assert pareto_front(SWEEP) == [(7.55, 9.7), (7.6, 9.5), (7.7, 9.2), (7.8, 8.8)]
    assert pareto_front([(1.0, 2.0), (1.0, 3.0), (math.nan, 0.0)]) == [(1.0, 2.0)]


def test_distance_against_a_hand_computed_case():
    # Halfway between T=1.0 (7.6, 9.5) and T=0.9 (7.7, 9.2) the curve is at 9.35.
    assert curve_at(SWEEP, 7.65) == pytest.approx(9.35)
    assert frontier_distance(SWEEP, (7.65, 9.25)) == pytest.approx(-0.10)  # below: better
    assert frontier_distance(SWEEP, (7.65, 9.45)) == pytest.approx(0.10)
    assert frontier_distance(SWEEP, (7.6, 9.5)) == pytest.approx(0.0)  # MLE's own T=1 point
    # Not the dominated T=1.2 branch: at 7.555 the curve runs between T=1.1 and T=1.0.
    assert curve_at(SWEEP, 7.555) == pytest.approx(9.68)


def test_an_objective_extends_the_end_segments():
    # left of 7.55: the T=1.1 -> T=1.0 segment (slope -4) extended; right of 7.8: T=0.9 -> 0.8 (-4)
    assert curve_at(SWEEP, 7.5, extrapolate=True) == pytest.approx(9.9)
    assert curve_at(SWEEP, 8.0, extrapolate=True) == pytest.approx(8.0)
    assert frontier_distance(SWEEP, (9.0, 8.0), extrapolate=True) == pytest.approx(4.0)  # collapsed
    assert curve_at([(1.0, 2.0)], 5.0, extrapolate=True) == 2.0


def test_distance_outside_the_sweep_is_nan_not_extrapolated():
    assert math.isnan(frontier_distance(SWEEP, (7.5, 9.0)))  # more coverage than any T reaches
    assert math.isnan(frontier_distance(SWEEP, (7.9, 8.0)))
    assert math.isnan(curve_at([], 1.0))


def test_a_models_own_curve_against_the_reference_at_matched_x():
    # A GAN's sweep (T = 0.8, 1.0, 1.2); at 7.7 its curve runs a third of the way from
    # (7.6, 9.5) to (7.9, 8.3): 9.1, where MLE's is at its T=0.9 point, 9.2.
    gan = [(7.9, 8.3), (7.6, 9.5), (7.58, 9.9)]
    assert curve_gap(gan, SWEEP, 7.7) == pytest.approx(-0.1)
    assert curve_gap(gan, SWEEP, 7.6) == pytest.approx(0.0)  # both through (7.6, 9.5)
    assert curve_gap(SWEEP, SWEEP, 7.65) == pytest.approx(0.0)  # MLE against itself
    assert math.isnan(curve_gap(gan, SWEEP, 7.57))  # the GAN's sweep does not reach it
    assert math.isnan(curve_gap(gan, SWEEP, 7.85))  # nor MLE's


def test_dominance_uses_the_reference_curve_between_its_points():
    mle = [(3.0, 9.0), (1.0, 11.0)]  # (NLL_test, NLL_oracle) at two temperatures
    assert dominated([(3.5, 9.5)], mle)  # worse than a point on both axes
    assert dominated([(2.1, 10.1)], mle)  # beaten only by the segment between them
    assert not dominated([(1.9, 9.9)], mle)  # below the segment: a better trade-off
    assert not dominated([(3.5, 9.5), (0.5, 12.0)], mle)  # one point beyond MLE's reach
    assert dominated([(3.0, 9.0)], mle)  # equal counts as matched


def test_novel_rows_are_the_samples_without_a_training_ngram():
    training = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 9]]
    samples = [
        [0, 1, 2, 3, 4],  # ends with 1 2 3 4: a training 4-gram
        [0, 1, 2, 3, 0],  # 1 2 3 and 2 3 0: training 3-grams only
        [9, 6, 7, 8, 9],  # 6 7 8 9 across the middle
        [5, 4, 3, 2, 1],  # the reverse of one: nothing
    ]
    assert novel_rows(samples, training, n=4) == [False, True, False, True]
    assert novel_rows(samples, training, n=3) == [False, False, False, True]


def test_pairwise_accuracy_counts_ties_as_half():
    real, fake = torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.0, 2.0])
    # pairs real > fake: (3,0) (3,2) (1,0) (2,0) = 4, ties (2,2) = 1, of 6
    assert pairwise_accuracy(real, fake) == pytest.approx(4.5 / 6)
    assert pairwise_accuracy(torch.ones(4), torch.ones(3)) == pytest.approx(0.5)


class _ScoresByFirstToken(torch.nn.Module):
    """A D whose sequence logit is its first token's id minus 5."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 1)

    def forward(self, tokens_BT, lengths_B=None):
        logit_B = tokens_BT[:, 0].float() - 5.0
        return logit_B[:, None].expand_as(tokens_BT.float()), logit_B


def test_heldout_accuracy_scores_real_and_fake_sides():
    real = torch.tensor([[9, 0], [8, 0], [1, 0], [7, 0]])  # logits 4, 3, -4, 2: 3 of 4 right
    fake = torch.tensor([[1, 0], [6, 0]])  # logits -4, 1: 1 of 2 right
    out = heldout_d_accuracy(_ScoresByFirstToken(), real, None, fake, None)
    assert out["d_acc_real"] == pytest.approx(0.75) and out["d_acc_fake"] == pytest.approx(0.5)
    assert out["d_acc"] == pytest.approx(0.625)
    assert out["d_auc"] == pytest.approx(pairwise_accuracy(torch.tensor([4.0, 3, -4, 2]),
                                                           torch.tensor([-4.0, 1])))  # fmt: skip
    assert d_accuracy_key("rsgan") == "d_auc" and d_accuracy_key("standard") == "d_acc"


def test_heldout_accuracy_runs_d_without_dropout_and_restores_its_mode():
    import dataclasses

    disc = Discriminator(dataclasses.replace(TINY, d_dropout=0.5))
    tokens = torch.randint(0, TINY.vocab_size, (16, TINY.max_len))
    first = heldout_d_accuracy(disc, tokens, None, tokens.flip(0), None)
    assert disc.training
    assert heldout_d_accuracy(disc, tokens, None, tokens.flip(0), None) == first


def test_rank_correlation_against_a_hand_computed_case():
    # ranks (0, 1, 2) against (0, 2, 1): Pearson of the ranks is 0.5
    a, b = torch.tensor([1.0, 2, 3]), torch.tensor([10.0, 30, 20])
    assert rank_correlation(a, b) == pytest.approx(0.5)
    assert rank_correlation(torch.arange(5.0), -torch.arange(5.0) ** 3) == pytest.approx(-1.0)


class _Scores(torch.nn.Module):
    """A D whose sequence logit is `score(tokens)`."""

    def __init__(self, score):
        super().__init__()
        self.head, self.score = torch.nn.Linear(1, 1), score

    def forward(self, tokens_BT, lengths_B=None):
        logit_B = self.score(tokens_BT).float()
        return logit_B[:, None].expand_as(tokens_BT.float()), logit_B


def test_d_log_ratio_correlation_is_one_for_the_optimal_d_and_falls_without_it():
    oracle = Oracle.random(vocab_size=TINY.vocab_size, max_len=TINY.max_len, embed_dim=8,
                           hidden_dim=8, seed=3)  # fmt: skip
    torch.manual_seed(0)
    gen = Generator(TINY)
    samples = sample_tokens(gen, 300, seed=1)
    optimal = _Scores(lambda t: sequence_nll(gen, t) - sequence_nll(oracle, t))
    assert d_log_ratio_correlation(optimal, gen, oracle, samples) == pytest.approx(1.0)
    inverted = _Scores(lambda t: sequence_nll(oracle, t) - sequence_nll(gen, t))
    assert d_log_ratio_correlation(inverted, gen, oracle, samples) == pytest.approx(-1.0)
    # a D that tells sequences apart by their first token alone hardly ranks them as the truth
    by_first = d_log_ratio_correlation(_ScoresByFirstToken(), gen, oracle, samples)
    assert abs(by_first) < 0.5
    assert gen.training  # G is scored in eval mode and left as it was
