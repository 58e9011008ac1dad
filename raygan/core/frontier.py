"""The quality-diversity frontier: MLE's temperature curve and a model's distance to it.

A point is (x, y) with both coordinates better when lower: on the oracle (NLL_test, NLL_oracle),
on text (Self-BLEU-4, -BLEU-4). Sampling an MLE model at temperatures T traces a curve; Caccia
et al. (ICLR 2020) found that this curve beats every published text GAN, so a GAN's point
counts as an improvement only where it lies below the curve, not where its y alone is lower
(lowering T lowers y for free, and so does REINFORCE with a positive reward and no baseline).

- `pareto_front`: the points no other point matches or beats on both axes, by x.
- `curve_at`: the front joined by straight lines, evaluated at x (NaN outside its x-range).
  Between two temperatures the chord lies on or above a convex curve, so a sparse sweep makes
  the reference look worse than it is; sweeps are dense where models land (near T=1).
- `frontier_distance`: y minus the curve at the model's own x; negative is below the curve,
  i.e. better than every temperature of MLE. MLE at any of the curve's temperatures scores 0
  by construction, so as an objective (PBT's `frontier_distance`) no temperature knob can win
  it, while NLL_oracle alone is won by the coldest, lowest-entropy model.
- `curve_gap`: one model's own temperature curve minus the reference curve at the same x (matched
  NLL_test), which does not hang on where the model's T=1 point happens to land.
- `dominated`: whether every point of a curve is matched or beaten by the reference curve.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

Point = tuple[float, float]


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points, sorted by x (their y then strictly falls)."""
    front: list[Point] = []
    for x, y in sorted(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def curve_at(reference: Iterable[Point], x: float, *, extrapolate: bool = False) -> float:
    """The reference's Pareto front, linearly interpolated at x; outside its x-range NaN, or
    with `extrapolate` its first or last segment extended (a one-point front is flat)."""
    front = pareto_front(reference)
    if not front:
        return math.nan
    if not front[0][0] <= x <= front[-1][0]:
        if not extrapolate:
            return math.nan
        if len(front) == 1:
            return front[0][1]
        (x0, y0), (x1, y1) = front[:2] if x < front[0][0] else front[-2:]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    for (x0, y0), (x1, y1) in itertools.pairwise(front):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return front[0][1]  # a front of one point, and x is that point's


def frontier_distance(
    reference: Iterable[Point], point: Point, *, extrapolate: bool = False
) -> float:
    """The point's y minus the reference curve at its x (negative: below, better); NaN when x
    lies outside the reference's range (a benchmark says so rather than extrapolate), unless
    `extrapolate` (an objective must rank every point: a collapsed G, far right, is then far
    above the extended curve)."""
    x, y = point
    return y - curve_at(reference, x, extrapolate=extrapolate)


def curve_gap(curve: Iterable[Point], reference: Iterable[Point], x: float) -> float:
    """`curve`'s front minus `reference`'s front at x (negative: below, better); NaN where either
    does not reach x."""
    return curve_at(curve, x) - curve_at(reference, x)


def dominated(curve: Sequence[Point], reference: Sequence[Point]) -> bool:
    """Whether every point of `curve` is matched or beaten on both axes by some point of the
    piecewise-linear `reference` curve (its points joined in the given order)."""
    segments = list(itertools.pairwise(reference)) or [(reference[0], reference[0])]
    return all(any(_segment_dominates(a, b, p) for a, b in segments) for p in curve)


def _segment_dominates(a: Point, b: Point, point: Point, eps: float = 1e-12) -> bool:
    """Is there t in [0, 1] with a + t(b - a) <= point on both coordinates?"""
    low, high = 0.0, 1.0
    for start, end, bound in zip(a, b, point, strict=True):
        slope = end - start
        if abs(slope) < eps:
            if start > bound + eps:
                return False
            continue
        t = (bound - start) / slope  # the coordinate equals the bound at t
        if slope > 0:
            high = min(high, t)
        else:
            low = max(low, t)
    return low <= high + eps
