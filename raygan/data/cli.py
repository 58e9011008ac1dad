"""`raygan prepare`'s options and its command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from raygan.core.errors import RayganError
from raygan.data.layout import ORACLE_KINDS
from raygan.data.prepare import (
    DEFAULT_TEST_FRACTION,
    LENGTH_COVERAGE,
    prepare_oracle,
    prepare_text,
)
from raygan.data.tokenizer import TOKENIZER_KINDS

_TEXT_ONLY = ("tokenizer", "test_input", "test_fraction", "min_frequency", "workers", "piece_mb")
_ORACLE_ONLY = ("num_samples", "num_test", "oracle_path")


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `raygan prepare` to `parser`."""
    parser.description = parser.description or run_prepare.__doc__.split("\n\n")[0]
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="FILE", help=_INPUT_HELP)
    source.add_argument(
        "--oracle", choices=ORACLE_KINDS, help="sample a synthetic corpus from an oracle"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help=_OUT_HELP)
    text = parser.add_argument_group("text corpora (--input)")
    text.add_argument("--tokenizer", choices=TOKENIZER_KINDS, help=_TOKENIZER_HELP)
    text.add_argument("--test-input", nargs="+", metavar="FILE", help="held-out test files")
    text.add_argument(
        "--test-fraction", type=float, metavar="F",
        help=f"else hold out this fraction of lines ({DEFAULT_TEST_FRACTION}; 0: no test split)",
    )
    text.add_argument(
        "--min-frequency", type=int, metavar="N", help="drop words seen fewer times (1)"
    )
    text.add_argument(
        "--workers", type=int, metavar="N",
        help="build it with N Ray Data tasks at once (on RAY_ADDRESS's cluster, else a local "
        "Ray): the same rows, ids and order as one process (default: one process, no Ray)",
    )
    text.add_argument(
        "--piece-mb", type=float, metavar="MB",
        help="with --workers: the inputs are cut into pieces of this size, one task each (64)",
    )
    oracle = parser.add_argument_group("oracle corpora (--oracle)")
    oracle.add_argument("--num-samples", type=int, metavar="N", help="training sequences (10000)")
    oracle.add_argument("--num-test", type=int, metavar="N", help="held-out sequences (10000)")
    oracle.add_argument("--oracle-path", metavar="FILE", help="SeqGAN target_params.npz (seqgan)")
    common = parser.add_argument_group("both")
    common.add_argument("--vocab-size", type=int, metavar="N", help=_VOCAB_HELP)
    common.add_argument(
        "--max-len", type=int, metavar="N",
        help=f"tokens per sequence, EOS included (text: the length that keeps "
        f"{LENGTH_COVERAGE:.0%}% of the training lines; oracle 20)",
    )
    common.add_argument(
        "--shard-rows", type=int, metavar="N", help="rows per Parquet shard (100000)"
    )
    common.add_argument("--seed", type=int, metavar="S", help="seeds the test split / oracle (0)")
    common.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    common.add_argument("--no-progress", action="store_true", help="no progress bars")


_INPUT_HELP = "UTF-8 text files, one sentence per line (paths or URIs: file://, s3://, gs://)"
_OUT_HELP = "output directory (path or URI); refused if non-empty unless --overwrite"
_TOKENIZER_HELP = "word (nltk-style, lowercased), bpe or char (default word)"
_VOCAB_HELP = "text: keep the most frequent (default all; bpe 8000); random oracle: 5000"


def run_prepare(args: argparse.Namespace) -> int:
    """Turn text files or an oracle's samples into Parquet shards, a tokenizer and a manifest.

    raygan prepare --input train.txt --test-input test.txt --out data/coco
    raygan prepare --oracle seqgan --oracle-path target_params.npz --out data/oracle
    """
    given = {k: v for k, v in vars(args).items() if v is not None}
    common = {k: given[k] for k in ("vocab_size", "max_len", "shard_rows", "seed") if k in given}
    common.update(overwrite=args.overwrite, progress=not args.no_progress)
    if args.input:
        _refuse_options(given, _ORACLE_ONLY, "--input")
        names = ("tokenizer", "test_fraction", "min_frequency", "workers", "piece_mb")
        options = {k: given[k] for k in names if k in given}
        summary = prepare_text(
            args.input, args.out, test_inputs=given.get("test_input"), **options, **common
        )
    else:
        _refuse_options(given, _TEXT_ONLY, "--oracle")
        options = {k: given[k] for k in _ORACLE_ONLY if k in given}
        summary = prepare_oracle(args.out, oracle=args.oracle, **options, **common)
    print(summary.table())
    if summary.kind == "text" and summary.max_len_note:
        print(summary.max_len_note)
    if summary.kind == "text" and (warning := summary.lost_warning()):
        print(warning, file=sys.stderr)
    print(f"vocab {summary.vocab_size}, max_len {summary.max_len}, {summary.seconds:.1f} s")
    print(f"wrote {args.out}")
    return 0


def _refuse_options(given: dict, names: Iterable[str], mode: str) -> None:
    wrong = [f"--{n.replace('_', '-')}" for n in names if n in given]
    if wrong:
        raise RayganError(f"{', '.join(wrong)} cannot be used with {mode}")
