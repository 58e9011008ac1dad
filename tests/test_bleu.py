"""raygan.core.bleu against nltk's sentence_bleu (method1 smoothing), the definition it replaces."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from raygan.core.bleu import BleuReference, bleu, self_bleu

TOL = 1e-9
ORDERS = (1, 2, 3, 4, 5)
SMOOTHING = SmoothingFunction().method1
COCO_TEST = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "image_coco"
    / "test"
    / "image_coco_test.txt"
)


# --------------------------------------------------------------------------------------------
# The reference implementation: nltk, exactly as the definition states it
# --------------------------------------------------------------------------------------------


def nltk_sentence(references: list, hypothesis: list, n: int) -> float:
    return sentence_bleu(references, hypothesis, weights=(1 / n,) * n, smoothing_function=SMOOTHING)


def nltk_bleu(hypotheses: list, references: list, n: int) -> float:
    scores = [nltk_sentence(references, h, n) for h in hypotheses]
    return sum(scores) / len(scores)


def nltk_self_bleu(sentences: list, n: int) -> float:
    scores = [
        nltk_sentence(sentences[:i] + sentences[i + 1 :], s, n) for i, s in enumerate(sentences)
    ]
    return sum(scores) / len(scores)


def random_corpus(rng: random.Random, count: int, vocab: list, max_len: int = 15) -> list:
    """Sentences over a tiny vocabulary (so n-grams collide), lengths 0..max_len, with dups."""
    sentences = []
    for _ in range(count):
        if sentences and rng.random() < 0.2:
            sentences.append(list(rng.choice(sentences)))  # an exact duplicate
            continue
        # Bias towards short sentences: shorter than n is the interesting edge.
        length = rng.choice([0, 1, 2, 3, 4, rng.randint(0, max_len)])
        sentences.append([rng.choice(vocab) for _ in range(length)])
    return sentences


def seeded_cases(seeds: range) -> list[tuple[list, list]]:
    cases = []
    for seed in seeds:
        rng = random.Random(seed)
        size = rng.randint(1, 6)
        # Alternate word and int tokens: any hashable token must work.
        vocab = [f"w{i}" for i in range(size)] if seed % 2 else list(range(size))
        refs = random_corpus(rng, rng.randint(1, 8), vocab)
        hyps = random_corpus(rng, rng.randint(2, 8), vocab)
        cases.append((hyps, refs))
    return cases


CASES = seeded_cases(range(150))


# --------------------------------------------------------------------------------------------
# Equality with nltk
# --------------------------------------------------------------------------------------------


def test_sentence_scores_equal_nltk_on_random_inputs() -> None:
    for hyps, refs in CASES:
        reference = BleuReference(refs)
        for hyp in hyps:
            ours = reference.sentence_bleu(hyp, ORDERS)
            for n in ORDERS:
                expected = nltk_sentence(refs, hyp, n)
                assert ours[n] == pytest.approx(expected, abs=TOL), (hyp, refs, n)
        # The one-order call gives the same number as the several-orders call.
        assert reference.sentence_bleu(hyps[-1], 3) == reference.sentence_bleu(hyps[-1], ORDERS)[3]


def test_bleu_means_equal_nltk_on_random_inputs() -> None:
    for hyps, refs in CASES:
        ours = bleu(hyps, refs, ORDERS)
        for n in ORDERS:
            assert ours[n] == pytest.approx(nltk_bleu(hyps, refs, n), abs=TOL), (hyps, refs, n)


def test_self_bleu_equals_nltk_on_random_inputs() -> None:
    for i, (hyps, refs) in enumerate(CASES):
        # Every third case also mixes both sets: more duplicates and length ties.
        for sentences in (hyps, refs + hyps) if i % 3 == 0 else (hyps,):
            ours = self_bleu(sentences, ORDERS)
            for n in ORDERS:
                expected = nltk_self_bleu(sentences, n)
                assert ours[n] == pytest.approx(expected, abs=TOL), (sentences, n)


def test_longer_sentences_and_larger_sets_equal_nltk() -> None:
    rng = random.Random(1234)
    vocab = [f"t{i}" for i in range(12)]
    refs = random_corpus(rng, 60, vocab, max_len=25)
    hyps = random_corpus(rng, 30, vocab, max_len=25)
    ours = bleu(hyps, refs, (2, 3, 4, 5))
    ours_self = self_bleu(hyps, (2, 3, 4, 5))
    for n in (2, 3, 4, 5):
        assert ours[n] == pytest.approx(nltk_bleu(hyps, refs, n), abs=TOL)
        assert ours_self[n] == pytest.approx(nltk_self_bleu(hyps, n), abs=TOL)


@pytest.mark.parametrize(
    ("hypothesis", "references"),
    [
        pytest.param([], [["a", "b"]], id="empty-hypothesis"),
        pytest.param(["a"], [["a", "b", "c"]], id="shorter-than-n-scores-nonzero"),
        pytest.param(["a", "a", "a", "a"], [["a", "b"], ["a", "a", "c"]], id="clipped-repeats"),
        pytest.param(["x", "y"], [["a", "b"]], id="no-unigram-match"),
        pytest.param(["a", "b"], [[], []], id="only-empty-references"),
        pytest.param(["a", "b", "c"], [["a"] * 2, ["b"] * 4], id="length-tie-goes-shorter"),
        pytest.param(["a", "b", "z", "a", "b"], [["a", "b", "a", "b"]], id="unknown-token"),
    ],
)
def test_edge_cases_equal_nltk(hypothesis: list, references: list) -> None:
    reference = BleuReference(references)
    for n in ORDERS:
        expected = nltk_sentence(references, hypothesis, n)
        assert reference.sentence_bleu(hypothesis, n) == pytest.approx(expected, abs=TOL)


def test_hypothesis_shorter_than_n_gets_epsilon_not_zero() -> None:
    # nltk's denominator is max(1, #n-grams) = 1, and method1 turns 0/1 into 0.1/1.
    assert bleu([["a"]], [["a"]], 2) == pytest.approx(math.sqrt(0.1), abs=TOL)


def test_reference_set_is_reusable_for_several_hypothesis_sets() -> None:
    rng = random.Random(7)
    vocab = list("abcdef")
    refs = random_corpus(rng, 20, vocab)
    reference = BleuReference(refs, max_n=4)
    for _ in range(3):
        hyps = random_corpus(rng, 10, [*vocab, "unseen"])
        for n in (1, 2, 3, 4):
            assert reference.bleu(hyps, n) == pytest.approx(nltk_bleu(hyps, refs, n), abs=TOL)


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


def test_coco_sample_equals_nltk() -> None:
    if not COCO_TEST.is_file():
        pytest.skip(f"COCO test captions not present at {COCO_TEST}")
    with COCO_TEST.open() as f:
        lines = [line.split() for _, line in zip(range(500), f, strict=False)]
    hyps, refs = lines[:50], lines
    weights = [(1 / n,) * n for n in (2, 3, 4, 5)]
    # One nltk call with several weights shares its counting; each score is computed exactly as
    # in the one-weight call (same precisions, zip stops at len(weight)), just 4x cheaper.
    expected = [sentence_bleu(refs, h, weights=weights, smoothing_function=SMOOTHING) for h in hyps]
    expected_self = [
        sentence_bleu(hyps[:i] + hyps[i + 1 :], h, weights=weights, smoothing_function=SMOOTHING)
        for i, h in enumerate(hyps)
    ]
    ours = bleu(hyps, refs)
    ours_self = self_bleu(hyps)
    for j, n in enumerate((2, 3, 4, 5)):
        assert ours[n] == pytest.approx(sum(e[j] for e in expected) / len(hyps), abs=TOL)
        assert ours_self[n] == pytest.approx(sum(e[j] for e in expected_self) / len(hyps), abs=TOL)


# --------------------------------------------------------------------------------------------
# Self-BLEU excludes the hypothesis itself, by position
# --------------------------------------------------------------------------------------------


def test_self_bleu_never_uses_the_hypothesis_as_its_own_reference() -> None:
    # Disjoint sentences: with itself as a reference each would score 1.0.
    assert self_bleu([["a", "b", "c"], ["x", "y", "z"]], 4) == 0.0
    unique = [["a", "b", "c", "d"], ["a", "b", "x", "y"], ["c", "d", "a", "b"]]
    assert all(score < 1.0 for score in self_bleu(unique, (2, 3, 4)).values())


def test_self_bleu_counts_a_duplicate_at_another_position() -> None:
    pair = [["a", "b", "c", "d"], ["a", "b", "c", "d"]]
    assert self_bleu(pair, 4) == pytest.approx(1.0, abs=TOL)


# --------------------------------------------------------------------------------------------
# API shape and bad input
# --------------------------------------------------------------------------------------------


def test_int_n_gives_float_and_sequence_gives_dict() -> None:
    hyps, refs = CASES[3]
    several = bleu(hyps, refs, (2, 4))
    assert set(several) == {2, 4}
    assert isinstance(bleu(hyps, refs, 2), float)
    assert several[4] == bleu(hyps, refs, 4)
    assert set(self_bleu(hyps)) == {2, 3, 4, 5}


def test_empty_reference_set_is_refused() -> None:
    with pytest.raises(ValueError, match="reference set is empty"):
        bleu([["a"]], [], 2)
    with pytest.raises(ValueError, match="reference set is empty"):
        BleuReference(iter([]))


@pytest.mark.parametrize("n", [0, -1, (2, 0), ()])
def test_order_below_one_is_refused(n: object) -> None:
    with pytest.raises(ValueError, match="n must be"):
        bleu([["a"]], [["a"]], n)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        self_bleu([["a"], ["b"]], n)  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2.0, True, "2", (2, None)])
def test_non_integer_order_is_refused(n: object) -> None:
    with pytest.raises(ValueError, match="n must be an int"):
        bleu([["a"]], [["a"]], n)  # type: ignore[arg-type]


def test_order_above_max_n_is_refused() -> None:
    reference = BleuReference([["a", "b"]], max_n=3)
    with pytest.raises(ValueError, match="n=4 > max_n=3"):
        reference.bleu([["a"]], 4)
    with pytest.raises(ValueError, match="n=5 > max_n=3"):
        reference.sentence_bleu(["a"], (2, 5))


def test_self_bleu_needs_two_sentences() -> None:
    with pytest.raises(ValueError, match="at least 2 sentences"):
        self_bleu([["a", "b"]], 2)
    with pytest.raises(ValueError, match="at least 2 sentences"):
        self_bleu([], 2)


def test_no_hypotheses_and_untokenized_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="no hypotheses"):
        bleu([], [["a"]], 2)
    with pytest.raises(TypeError, match="tokenize first"):
        bleu(["a b c"], [["a", "b"]], 2)
    with pytest.raises(TypeError, match="tokenize first"):
        self_bleu(["a b", "c d"], 2)
