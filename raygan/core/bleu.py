"""Exact, fast BLEU-n and Self-BLEU-n for generated text (the text-GAN evaluation metrics).

Definitions (the ones text-GAN papers use, via nltk):

* **BLEU-n** of hypotheses ``H`` against references ``R`` is the mean over ``h in H`` of
  ``nltk.translate.bleu_score.sentence_bleu(R, h, weights=(1/n,)*n,
  smoothing_function=SmoothingFunction().method1)``: every hypothesis is scored against the whole
  reference set.
* **Self-BLEU-n** of sentences ``S`` is the same mean, with sentence ``i`` scored against all the
  *other* sentences ``S[:i] + S[i+1:]`` (excluded by position, so a duplicate of ``S[i]`` elsewhere
  in ``S`` is a reference for it).

Equivalence with nltk: the integer parts (clipped match counts, ``max(1, #hypothesis n-grams)``
denominators, closest reference length with ties going to the shorter) are computed exactly, and
the float part replays nltk's operations in nltk's order: the early ``0`` when no unigram matches,
method1's ``(0 + 0.1) / denominator`` for an order without matches (also for orders longer than
the hypothesis, whose denominator is 1), then ``bp * exp(fsum(w * log(p)))``. Sentence scores are
therefore bit-identical to nltk's; the tests hold them to 1e-9 on randomized inputs. Sentences are
sequences of any hashable tokens (words or int ids); a plain ``str`` is refused because it would
silently be scored character by character.

Why it is faster: nltk recounts every reference's n-grams for every hypothesis, O(|H| * |R|).
The clipped count only needs, per n-gram, the *maximum* count in any single reference, and the
brevity penalty only needs the sorted set of reference lengths. :class:`BleuReference` computes
both once; a hypothesis set then costs a few vectorized look-ups per n-gram. Self-BLEU keeps, per
n-gram, the two largest per-sentence counts and which sentence holds the largest, so the maximum
over "all sentences but i" is O(1), and a length multiset does the same for the brevity penalty.
n-grams are numbered with numpy instead of hashed as tuples: order-k n-gram ids are the ranks of
the pairs (order-(k-1) id, next token id), which is exact for any vocabulary size and ~5x faster
than a dict of tuples on COCO.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BleuReference", "bleu", "self_bleu"]

Sentence = Sequence[Hashable]

# nltk's SmoothingFunction().method1 default: added to a zero match count.
_EPSILON = 0.1
# Id of a token, or n-gram, that the reference set does not contain.
_ABSENT = -1


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_sentences(sentences: Iterable[Sentence], what: str) -> list[Sentence]:
    """Materialise the sentences once, refusing untokenized strings."""
    out = list(sentences)
    for sentence in out:
        if isinstance(sentence, str | bytes):
            raise TypeError(
                f"{what} must be token sequences, got the string {sentence[:40]!r}; "
                "tokenize first (e.g. line.split())"
            )
    return out


def _as_orders(n: int | Sequence[int], max_n: int | None = None) -> list[int]:
    """Validate one BLEU order or several; ``max_n`` is the largest order precomputed."""
    orders = (
        [n] if isinstance(n, numbers.Integral | str) or not isinstance(n, Iterable) else list(n)
    )
    if not orders:
        raise ValueError("n must be an int >= 1 or a non-empty sequence of them")
    for order in orders:
        if isinstance(order, bool) or not isinstance(order, numbers.Integral):
            raise ValueError(f"BLEU order n must be an int, got {order!r}")
        if order < 1:
            raise ValueError(f"BLEU order n must be >= 1, got {order}")
        if max_n is not None and order > max_n:
            raise ValueError(
                f"BLEU order n={order} > max_n={max_n} this reference set was built for; "
                f"build BleuReference(..., max_n={order})"
            )
    return [int(order) for order in orders]  # numpy integers too


def _result(scores: dict[int, float], n: int | Sequence[int]) -> dict[int, float] | float:
    """A float for an int ``n``, else the dict order -> score."""
    return scores[int(n)] if isinstance(n, numbers.Integral) else scores


def _mean(values: list[float]) -> float:
    # fsum: the mean should not depend on the order of the hypotheses.
    return math.fsum(values) / len(values)


# --------------------------------------------------------------------------------------------
# One sentence's score from its counts, replaying nltk's corpus_bleu for one hypothesis
# --------------------------------------------------------------------------------------------


def _closest(lengths: list[int], hyp_len: int, skip_own: bool = False) -> int:
    """Closest length to ``hyp_len`` in sorted unique ``lengths`` (ties -> shorter, as nltk).

    ``skip_own`` drops ``hyp_len`` itself from the candidates (Self-BLEU, when the hypothesis
    is the only sentence of its length).
    """
    j = bisect.bisect_left(lengths, hyp_len)
    if j < len(lengths) and lengths[j] == hyp_len:
        if not skip_own:
            return hyp_len
        above = lengths[j + 1] if j + 1 < len(lengths) else None
    else:
        above = lengths[j] if j < len(lengths) else None
    below = lengths[j - 1] if j > 0 else None
    if below is None:
        assert above is not None, "closest length in an empty length set"
        return above
    if above is None or hyp_len - below <= above - hyp_len:
        return below
    return above


def _score(matches: Sequence[int], hyp_len: int, closest: int, n: int) -> float:
    """BLEU-n of one hypothesis from its clipped match counts per order (``matches[k-1]``)."""
    # nltk returns 0 before smoothing when no unigram matches (this covers empty hypotheses).
    if matches[0] == 0:
        return 0.0
    weight = 1 / n
    terms = []
    for order in range(1, n + 1):
        # nltk: denominator = max(1, number of hypothesis n-grams), so it is 1 when the
        # hypothesis is shorter than the order, and method1 then gives 0.1, not 0.
        denominator = max(1, hyp_len - order + 1)
        matched = matches[order - 1]
        precision = matched / denominator if matched else (matched + _EPSILON) / denominator
        terms.append(weight * math.log(precision))
    # nltk's brevity_penalty: 1 if longer than the closest reference, else exp(1 - r/c).
    bp = 1.0 if hyp_len > closest else math.exp(1 - closest / hyp_len)
    return bp * math.exp(math.fsum(terms))


# --------------------------------------------------------------------------------------------
# Vectorized n-gram numbering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Flat:
    """Sentences concatenated into one token-id array, with what n-gram slicing needs."""

    ids: np.ndarray  # token id per position, _ABSENT for tokens outside the vocabulary
    sentence: np.ndarray  # index of the sentence each position belongs to
    remaining: np.ndarray  # tokens from this position to the end of its sentence (>= 1)
    lengths: list[int]

    @classmethod
    def of(cls, sentences: list[Sentence], ids: list[int]) -> _Flat:
        lengths = [len(s) for s in sentences]
        counts = np.array(lengths, dtype=np.int64)
        sentence = np.repeat(np.arange(len(sentences), dtype=np.int64), counts)
        ends = np.cumsum(counts)
        remaining = ends[sentence] - np.arange(len(ids), dtype=np.int64)
        return cls(np.array(ids, dtype=np.int64), sentence, remaining, lengths)


def _numbered(sentences: list[Sentence]) -> tuple[_Flat, dict[Hashable, int]]:
    """Flatten, numbering tokens in order of first appearance; returns the vocabulary too."""
    vocab: dict[Hashable, int] = {}
    ids = [vocab.setdefault(token, len(vocab)) for s in sentences for token in s]
    return _Flat.of(sentences, ids), vocab


def _gram_ids(
    flat: _Flat, order: int, previous: np.ndarray, vocab_size: int, table: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Ids of the order-``order`` n-grams starting at each position (``_ABSENT`` where none).

    ``previous`` holds the order-(k-1) ids. An order-k n-gram is the pair (order-(k-1) id, last
    token id), packed into one int64 ``previous * vocab_size + token`` (both factors are below
    the reference token count, so this fits for any corpus under 3e9 tokens); its id is its rank
    in the sorted ``table`` of such pairs, an exact numbering with no hashing. ``table=None``
    builds the table from this corpus (the reference side); otherwise pairs missing from it get
    ``_ABSENT``. Returns (ids per position, table); ``len(table)`` is the number of ids.
    """
    if order == 1:  # the token ids themselves
        return previous, table if table is not None else np.arange(vocab_size, dtype=np.int64)
    starts = np.flatnonzero((flat.remaining >= order) & (previous != _ABSENT))
    last = flat.ids[starts + order - 1]
    known = last != _ABSENT
    starts, last = starts[known], last[known]
    pairs = previous[starts] * vocab_size + last
    ids = np.full(len(flat.ids), _ABSENT, dtype=np.int64)
    if table is None:
        table, ids[starts] = np.unique(pairs, return_inverse=True)
        return ids, table
    rank = np.searchsorted(table, pairs)
    found = rank < len(table)
    found[found] = table[rank[found]] == pairs[found]
    ids[starts[found]] = rank[found]
    return ids, table


def _per_sentence_counts(
    flat: _Flat, gram_ids: np.ndarray, num_grams: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sentence, n-gram id, count) for every distinct n-gram of every sentence."""
    where = np.flatnonzero(gram_ids != _ABSENT)
    keys, counts = np.unique(flat.sentence[where] * num_grams + gram_ids[where], return_counts=True)
    return keys // num_grams, keys % num_grams, counts


def _match_counts(num_sentences: int, sentence: np.ndarray, clipped: np.ndarray) -> np.ndarray:
    """Sum clipped counts per sentence (as int64; float weights are exact below 2**53)."""
    totals = np.bincount(sentence, weights=clipped, minlength=num_sentences)
    return totals.astype(np.int64)


# --------------------------------------------------------------------------------------------
# BLEU against a fixed reference set
# --------------------------------------------------------------------------------------------


class BleuReference:
    """A reference set, precomputed once and reusable for many hypothesis sets.

    Args:
        references: the reference sentences (token sequences); must not be empty.
        max_n: the largest BLEU order that will be asked for.
    """

    def __init__(self, references: Iterable[Sentence], max_n: int = 5) -> None:
        refs = _as_sentences(references, "references")
        if not refs:
            raise ValueError("the reference set is empty; BLEU needs at least one reference")
        _as_orders(max_n)
        self.max_n = max_n
        self.num_references = len(refs)
        flat, self._vocab = _numbered(refs)
        # Per order: the table numbering its n-grams, and each n-gram's largest count in any
        # single reference (nltk's clipping limit).
        self._tables: list[np.ndarray] = []
        self._limits: list[np.ndarray] = []
        gram_ids = flat.ids
        for order in range(1, max_n + 1):
            gram_ids, table = _gram_ids(flat, order, gram_ids, len(self._vocab), None)
            _, grams, counts = _per_sentence_counts(flat, gram_ids, len(table))
            limit = np.zeros(len(table), dtype=np.int64)
            np.maximum.at(limit, grams, counts)
            self._tables.append(table)
            self._limits.append(limit)
        self._lengths = sorted(set(flat.lengths))

    def _matches(self, hyps: list[Sentence], top: int) -> tuple[list[list[int]], list[int]]:
        """Clipped match counts per hypothesis for orders 1..top, and hypothesis lengths."""
        get = self._vocab.get
        flat = _Flat.of(hyps, [get(token, _ABSENT) for s in hyps for token in s])
        per_order = []
        gram_ids = flat.ids
        for order in range(1, top + 1):
            table = self._tables[order - 1]
            gram_ids, _ = _gram_ids(flat, order, gram_ids, len(self._vocab), table)
            limit = self._limits[order - 1]
            sentence, grams, counts = _per_sentence_counts(flat, gram_ids, len(limit))
            clipped = np.minimum(counts, limit[grams])
            per_order.append(_match_counts(len(hyps), sentence, clipped))
        return np.stack(per_order, axis=1).tolist(), flat.lengths

    def _scores(self, hyps: list[Sentence], orders: list[int]) -> dict[int, list[float]]:
        matches, lengths = self._matches(hyps, max(orders))
        closest = [_closest(self._lengths, length) for length in lengths]
        return {
            n: [_score(m, h, c, n) for m, h, c in zip(matches, lengths, closest, strict=True)]
            for n in orders
        }

    def sentence_bleu(
        self, hypothesis: Sentence, n: int | Sequence[int]
    ) -> dict[int, float] | float:
        """BLEU-n of one hypothesis (a float for an int ``n``, else a dict order -> score)."""
        orders = _as_orders(n, self.max_n)
        hyps = _as_sentences([hypothesis], "hypothesis")
        return _result({k: v[0] for k, v in self._scores(hyps, orders).items()}, n)

    def bleu(
        self, hypotheses: Iterable[Sentence], n: int | Sequence[int]
    ) -> dict[int, float] | float:
        """Mean BLEU-n over the hypotheses; several orders share one n-gram count."""
        orders = _as_orders(n, self.max_n)
        hyps = _as_sentences(hypotheses, "hypotheses")
        if not hyps:
            raise ValueError("no hypotheses to score")
        return _result({k: _mean(v) for k, v in self._scores(hyps, orders).items()}, n)


def bleu(
    hypotheses: Iterable[Sentence],
    references: Iterable[Sentence],
    n: int | Sequence[int] = (2, 3, 4, 5),
) -> dict[int, float] | float:
    """Mean BLEU-n of ``hypotheses`` against the whole ``references`` set (nltk method1).

    Returns a float for an int ``n``, else a dict order -> score.
    """
    orders = _as_orders(n)
    return BleuReference(references, max_n=max(orders)).bleu(hypotheses, n)


# --------------------------------------------------------------------------------------------
# Self-BLEU: each sentence against all the others
# --------------------------------------------------------------------------------------------


def _limits_excluding_self(
    sentence: np.ndarray, grams: np.ndarray, counts: np.ndarray, num_grams: int
) -> np.ndarray:
    """Per (sentence, n-gram) row: the n-gram's largest count among the OTHER sentences.

    Per n-gram, sort the per-sentence counts descending: the largest, the sentence holding it
    and the runner-up answer "max over all sentences but i" in O(1). A tie for the largest
    makes the runner-up equal to it, so excluding either holder changes nothing.
    """
    by_gram = np.lexsort((-counts, grams))
    sorted_grams, sorted_counts = grams[by_gram], counts[by_gram]
    first = np.flatnonzero(np.diff(sorted_grams, prepend=_ABSENT))  # start of each n-gram
    largest = np.zeros(num_grams, dtype=np.int64)
    holder = np.full(num_grams, _ABSENT, dtype=np.int64)
    second = np.zeros(num_grams, dtype=np.int64)
    largest[sorted_grams[first]] = sorted_counts[first]
    holder[sorted_grams[first]] = sentence[by_gram][first]
    nxt = first + 1
    has_second = nxt < len(sorted_grams)
    has_second[has_second] = sorted_grams[nxt[has_second]] == sorted_grams[first[has_second]]
    second[sorted_grams[first[has_second]]] = sorted_counts[nxt[has_second]]
    return np.where(holder[grams] == sentence, second[grams], largest[grams])


def _self_bleu_scores(sentences: list[Sentence], orders: list[int]) -> dict[int, list[float]]:
    """Self-BLEU-n of every sentence against the others, per order (needs >= 2 sentences)."""
    flat, vocab = _numbered(sentences)
    per_order = []
    gram_ids = flat.ids
    for order in range(1, max(orders) + 1):
        gram_ids, table = _gram_ids(flat, order, gram_ids, len(vocab), None)
        sentence, grams, counts = _per_sentence_counts(flat, gram_ids, len(table))
        limits = _limits_excluding_self(sentence, grams, counts, len(table))
        per_order.append(_match_counts(len(sentences), sentence, np.minimum(counts, limits)))
    matches = np.stack(per_order, axis=1).tolist()

    length_counts = Counter(flat.lengths)
    lengths = sorted(length_counts)
    # Its own length stays a candidate only if another sentence has it too.
    closest = [_closest(lengths, h, skip_own=length_counts[h] == 1) for h in flat.lengths]
    rows = list(zip(matches, flat.lengths, closest, strict=True))
    return {k: [_score(m, h, c, k) for m, h, c in rows] for k in orders}


def self_bleu(
    sentences: Iterable[Sentence], n: int | Sequence[int] = (2, 3, 4, 5)
) -> dict[int, float] | float:
    """Mean Self-BLEU-n: each sentence scored against all the others (never itself).

    Needs at least two sentences. Returns a float for an int ``n``, else a dict order -> score.
    """
    orders = _as_orders(n)
    sents = _as_sentences(sentences, "sentences")
    if len(sents) < 2:
        raise ValueError(
            f"Self-BLEU needs at least 2 sentences (each is scored against the others), "
            f"got {len(sents)}"
        )
    scores = _self_bleu_scores(sents, orders)
    return _result({k: _mean(v) for k, v in scores.items()}, n)


def bleu_tokens(tokens_NT, lengths_N, eos_id: int | None) -> list[list[int]]:
    """Token lists without EOS and padding, as BLEU compares them (tensors or arrays: (N, T)
    token ids and (N,) lengths, EOS included)."""
    rows = [row[: int(n)] for row, n in zip(tokens_NT.tolist(), lengths_N.tolist(), strict=True)]
    return [row[:-1] if eos_id is not None and row and row[-1] == eos_id else row for row in rows]
