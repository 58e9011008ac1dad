"""Benchmark raygan.core.bleu against nltk on COCO captions (or seeded random sentences).

    python scripts/bench_bleu.py [--hypotheses 1000] [--references 10000] [--nltk-sample 20]
                                 [--markdown BENCHMARKS.md]
    python scripts/bench_bleu.py --smoke-test       # 50 hypotheses, 200 references

References: the first ``--references`` lines of the COCO test captions; hypotheses: the first
``--hypotheses`` lines of the COCO train captions (whitespace-tokenized), both from
``<repo>/../shared/data/image_coco``. Without that folder, seeded random sentences stand in.

raygan.core.bleu is timed on all hypotheses (best of ``--repeats`` runs). nltk takes ~1 s per
hypothesis against 10,000 references, so it is timed on ``--nltk-sample`` evenly spaced
hypotheses and its per-hypothesis time is extrapolated to all of them. nltk is given its fastest
form: one ``sentence_bleu`` call with the four weight tuples, which counts n-grams once for
BLEU-2..5 (four one-order calls, as the definition is written, cost ~2.4x more). The sampled
scores of both must agree within 1e-9. Self-BLEU is benchmarked the same way.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nltk
import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from raygan.bench.harness import Benchmark, main  # noqa: E402
from raygan.core.bleu import BleuReference, _self_bleu_scores, self_bleu  # noqa: E402

COCO_DIR = REPO_ROOT.parent / "shared" / "data" / "image_coco"
COCO_REFERENCES = COCO_DIR / "test" / "image_coco_test.txt"
COCO_HYPOTHESES = COCO_DIR / "train" / "image_coco.txt"
ORDERS = (2, 3, 4, 5)
TOL = 1e-9
SMOOTHING = SmoothingFunction().method1
WEIGHTS = [(1 / n,) * n for n in ORDERS]

Corpus = list[list[str]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hypotheses", type=int, default=1000, help="hypotheses scored")
    parser.add_argument("--references", type=int, default=10000, help="reference sentences")
    parser.add_argument(
        "--nltk-sample", type=int, default=20, help="hypotheses nltk is timed on (extrapolated)"
    )
    parser.add_argument(
        "--nltk-self-sample", type=int, default=20, help="sentences nltk Self-BLEU is timed on"
    )
    parser.add_argument("--repeats", type=int, default=3, help="raygan.core.bleu runs; best is kept")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random fallback data")


def read_lines(path: Path, count: int) -> Corpus:
    with path.open() as f:
        return [line.split() for _, line in zip(range(count), f, strict=False)]


def random_corpus(rng: np.random.Generator, count: int) -> Corpus:
    """Caption-like stand-in: Zipf-distributed words from a 5,000 vocabulary, 5..20 tokens."""
    lengths = rng.integers(5, 21, size=count)
    words = np.minimum(rng.zipf(1.3, size=int(lengths.sum())), 5000)
    tokens = [f"w{w}" for w in words.tolist()]
    ends = np.cumsum(lengths).tolist()
    return [tokens[end - length : end] for end, length in zip(ends, lengths.tolist(), strict=True)]


def load_data(args: argparse.Namespace) -> tuple[Corpus, Corpus, str]:
    if COCO_REFERENCES.is_file() and COCO_HYPOTHESES.is_file():
        refs = read_lines(COCO_REFERENCES, args.references)
        hyps = read_lines(COCO_HYPOTHESES, args.hypotheses)
        return hyps, refs, f"COCO captions from {COCO_DIR}"
    rng = np.random.default_rng(args.seed)
    refs, hyps = random_corpus(rng, args.references), random_corpus(rng, args.hypotheses)
    source = f"random sentences (numpy seed {args.seed}): {COCO_DIR} not found"
    return hyps, refs, source


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` runs, and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def sample_indices(total: int, size: int) -> list[int]:
    """``size`` evenly spaced indices, so the sample spans the file (lengths vary along it)."""
    size = max(1, min(size, total))
    return sorted({int(i) for i in np.linspace(0, total - 1, size)})


def bench_bleu(hyps: Corpus, refs: Corpus, args: argparse.Namespace) -> dict:
    build_s, reference = best_time(lambda: BleuReference(refs, max_n=max(ORDERS)), args.repeats)
    score_s, scores = best_time(lambda: reference.bleu(hyps, ORDERS), args.repeats)

    sample = sample_indices(len(hyps), args.nltk_sample)
    start = time.perf_counter()
    expected = [
        sentence_bleu(refs, hyps[i], weights=WEIGHTS, smoothing_function=SMOOTHING) for i in sample
    ]
    nltk_s = time.perf_counter() - start
    ours = [reference.sentence_bleu(hyps[i], ORDERS) for i in sample]
    max_diff = max(
        abs(o[n] - e[j]) for o, e in zip(ours, expected, strict=True) for j, n in enumerate(ORDERS)
    )
    per_hyp = nltk_s / len(sample)
    return {
        "scores": scores,
        "ours_build_s": build_s,
        "ours_score_s": score_s,
        "ours_total_s": build_s + score_s,
        "nltk_sample_size": len(sample),
        "nltk_sample_s": nltk_s,
        "nltk_per_hypothesis_s": per_hyp,
        "nltk_extrapolated_s": per_hyp * len(hyps),
        "speedup": per_hyp * len(hyps) / (build_s + score_s),
        "speedup_scoring_only": per_hyp * len(hyps) / score_s,
        "sample_max_abs_diff": max_diff,
    }


def bench_self_bleu(hyps: Corpus, args: argparse.Namespace) -> dict:
    total_s, scores = best_time(lambda: self_bleu(hyps, ORDERS), args.repeats)

    sample = sample_indices(len(hyps), args.nltk_self_sample)
    start = time.perf_counter()
    expected = [
        sentence_bleu(
            hyps[:i] + hyps[i + 1 :], hyps[i], weights=WEIGHTS, smoothing_function=SMOOTHING
        )
        for i in sample
    ]
    nltk_s = time.perf_counter() - start
    ours = _self_bleu_scores(hyps, list(ORDERS))
    max_diff = max(
        abs(ours[n][i] - e[j])
        for i, e in zip(sample, expected, strict=True)
        for j, n in enumerate(ORDERS)
    )
    per_sentence = nltk_s / len(sample)
    return {
        "scores": scores,
        "ours_total_s": total_s,
        "nltk_sample_size": len(sample),
        "nltk_sample_s": nltk_s,
        "nltk_per_sentence_s": per_sentence,
        "nltk_extrapolated_s": per_sentence * len(hyps),
        "speedup": per_sentence * len(hyps) / total_s,
        "sample_max_abs_diff": max_diff,
    }


def markdown(result: dict) -> str:
    b, s = result["bleu"], result["self_bleu"]
    n_h, n_r = result["num_hypotheses"], result["num_references"]
    rows = [
        "| metric | raygan.core.bleu | nltk (extrapolated) | nltk per sentence | speed-up | "
        "max abs diff (sample) |",
        "|---|---|---|---|---|---|",
        f"| BLEU-2..5, {n_h} hyps x {n_r} refs | {b['ours_total_s']:.3f} s "
        f"(build {b['ours_build_s']:.3f} + score {b['ours_score_s']:.3f}) "
        f"| {b['nltk_extrapolated_s']:.0f} s | {b['nltk_per_hypothesis_s'] * 1e3:.0f} ms "
        f"(n={b['nltk_sample_size']}) | {b['speedup']:,.0f}x "
        f"({b['speedup_scoring_only']:,.0f}x reusing the reference) "
        f"| {b['sample_max_abs_diff']:.1e} |",
        f"| Self-BLEU-2..5, {n_h} sentences | {s['ours_total_s']:.3f} s "
        f"| {s['nltk_extrapolated_s']:.1f} s | {s['nltk_per_sentence_s'] * 1e3:.1f} ms "
        f"(n={s['nltk_sample_size']}) | {s['speedup']:,.0f}x | {s['sample_max_abs_diff']:.1e} |",
        "",
        "| n | BLEU-n | Self-BLEU-n |",
        "|---|---|---|",
    ]
    rows += [f"| {n} | {b['scores'][n]:.6f} | {s['scores'][n]:.6f} |" for n in ORDERS]
    return "\n".join(rows)


def markdown_section(result: dict) -> str:
    return (
        f"{result['markdown']}\n\nData: {result['data_source']}; {result['num_hypotheses']:,} "
        f"hypotheses, {result['num_references']:,} references. nltk: {result['nltk_timing']}; "
        f"raygan.core.bleu: {result['ours_timing']}.\n\nCommand: `{result['command']}`"
    )


def measure(args: argparse.Namespace) -> dict:
    if args.smoke_test:
        args.hypotheses, args.references, args.nltk_sample, args.nltk_self_sample = 50, 200, 3, 3
    hyps, refs, source = load_data(args)
    print(f"data: {source}; {len(hyps)} hypotheses, {len(refs)} references")
    print(
        f"nltk is timed on {args.nltk_sample} (BLEU) and {args.nltk_self_sample} (Self-BLEU) "
        "evenly spaced sentences, one multi-weight sentence_bleu call each; its per-sentence "
        f"time is extrapolated to all {len(hyps)}. raygan.core.bleu: best of {args.repeats} runs."
    )
    result = {
        "data_source": source,
        "num_hypotheses": len(hyps),
        "num_references": len(refs),
        "orders": list(ORDERS),
        "nltk_timing": "sample, extrapolated linearly; one sentence_bleu call with 4 weights",
        "ours_timing": f"best of {args.repeats}",
        "versions": {"numpy": np.__version__, "nltk": nltk.__version__},
        "bleu": bench_bleu(hyps, refs, args),
        "self_bleu": bench_self_bleu(hyps, args),
    }
    result["markdown"] = markdown(result)
    return result


def mismatch(result: dict) -> int:
    worst = max(result["bleu"]["sample_max_abs_diff"], result["self_bleu"]["sample_max_abs_diff"])
    if worst > TOL:
        print(f"MISMATCH: raygan.core.bleu and nltk differ by {worst:.3e} > {TOL}", file=sys.stderr)
        return 1
    return 0


BENCH = Benchmark(section="bleu", default_json="benchmarks/bleu.json", measure=measure,
                  render=markdown_section, add_arguments=add_arguments, exit_code=mismatch)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(main(BENCH, __doc__.splitlines()[0]))
