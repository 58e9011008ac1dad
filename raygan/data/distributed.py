"""`raygan prepare --workers N`: prepare_text's corpus built by Ray Data tasks.

The inputs are cut into pieces of about `piece_bytes` at line starts (a compressed file is one
piece, read whole). The cut depends only on the bytes and `piece_bytes`, never on N, so every N
writes the same shards; read in shard order, their rows are prepare_text's rows, in its order,
with its ids. One task reads, decodes and encodes one piece, and writes that piece's shards,
`{split}-{piece:05d}-{k:05d}.parquet`, straight into the output (on a cluster: the output URI;
a local path must be one that every node sees). The tasks run in up to three rounds:

0. Lines per piece (a newline count), only when the test split is drawn by line number: each
   piece then knows the number of its first line, which _is_test hashes.
1. word: each piece pre-tokenizes its lines once (prepare's WordIds: ids in the order its words
   turn up) and keeps those rows under _pieces/, with its words and their counts in training
   lines. A word is one token whatever the vocabulary, so lengths and dropped lines are final
   here. char: only the counts of the piece's code points (numpy finds them at once). Summed
   over pieces, the counts give the vocabulary one process's trainer
   builds (raygan.data.tokenizer.trained_vocabulary): no process reads the whole corpus.
   bpe: merges do not add up over pieces, so the driver trains the tokenizer in one pass over
   the train split, as prepare_text does (that pass bounds BPE's speed-up).
2. Each piece's rows in the corpus's ids (word: the kept rows through an id table; bpe and
   char: encoded with the trained tokenizer by prepare's encoders, a word at a time for bpe and
   through numpy for char), as its shards.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tokenizers import Tokenizer

from raygan.core.errors import RayganError
from raygan.data import storage
from raygan.data.layout import SPLITS
from raygan.data.prepare import (
    PrepareSummary,
    SplitCounts,
    TextOptions,
    WordIds,
    _decode,
    _is_test,
    _Output,
    _progress,
    _ShardWriter,
    _Source,
    _train,
    char_counts,
    encode_words,
    encoder,
    id_table,
    max_len_of,
    readable,
    remap_rows,
)
from raygan.data.tokenizer import trained_vocabulary, wordlevel_tokenizer

PIECES_DIR = "_pieces"  # round 1's rows and word counts, and the trained tokenizer; removed after
_SCAN_BYTES = 1 << 16  # read when looking for the line start after a cut


@dataclass(frozen=True)
class Piece:
    """The lines that start in bytes [start, end) of one input (end None: the whole file, read
    as a stream, for compressed inputs)."""

    index: int
    fs: pafs.FileSystem
    path: str
    split: str | None  # None: each line's split is drawn by _is_test
    start: int
    end: int | None
    size: int  # bytes read, for progress
    first_line: int = 0  # the number of its first line over all inputs


@dataclass(frozen=True)
class _Target:
    """Where tasks write: the output's (temporary) directory."""

    fs: pafs.FileSystem
    dir: str

    def file(self, name: str) -> str:
        return storage.join(self.dir, name)


def build_text(
    sources: list[_Source], output: _Output, opt: TextOptions, *, workers: int, piece_bytes: int
):
    """prepare_text's (tokenizer, summary, the manifest's splits), built by Ray Data tasks."""
    from raygan.run.ray_env import ensure_ray

    ensure_ray()
    target = _Target(output.fs, output.dir)
    target.fs.create_dir(target.file(PIECES_DIR), recursive=True)
    pieces = cut_pieces(sources, piece_bytes)
    if opt.test_fraction and any(p.split is None for p in pieces):
        pieces = _number_lines(pieces, workers, opt.progress)
    run = _Rounds(pieces, workers, target, opt)
    train_sources = [s for s in sources if s.split != "test"]
    if opt.tokenizer == "bpe":
        tok = _train(train_sources, opt.tokenizer, opt.vocab_size, opt.min_frequency,
                     opt.test_fraction, opt.seed, opt.progress)  # fmt: skip
        max_len, note = max_len_of(opt, train_sources, tok)
        _save_tokenizer(target, tok)
        results = run("encode", _encode_piece, max_len=max_len)
    elif opt.tokenizer == "char":  # counts, then one numpy pass (prepare's encoder)
        max_len, note = max_len_of(opt, train_sources)
        run("count", _count_chars)
        tok = _merged_tokenizer(target, pieces, opt)
        _save_tokenizer(target, tok)
        results = run("encode", _encode_piece, max_len=max_len)
    else:  # word
        max_len, note = max_len_of(opt, train_sources)
        found = run("read", _encode_piece_locally, max_len=max_len)
        tok = _merged_tokenizer(target, pieces, opt)
        _save_tokenizer(target, tok)
        results = [
            {**new, "counts": _with_unknown(old["counts"], new["unk_tokens"])}
            for old, new in zip(found, run("write", _remap_piece), strict=True)
        ]
    target.fs.delete_dir(target.file(PIECES_DIR))
    summary = PrepareSummary(output.uri, "text", tok.get_vocab_size(), max_len, max_len_note=note)
    summary.splits = {name: SplitCounts() for name in SPLITS}
    splits = {name: {"rows": 0, "shards": []} for name in SPLITS}
    for result in results:  # in piece order
        for name in SPLITS:
            _add_counts(summary.splits[name], result["counts"][name])
            splits[name]["rows"] += result["shards"][name]["rows"]
            splits[name]["shards"] += result["shards"][name]["shards"]
    return tok, summary, splits


# -- pieces --------------------------------------------------------------------------------------
def cut_pieces(sources: list[_Source], piece_bytes: int) -> list[Piece]:
    """Every input cut at the first line start at or after each multiple of `piece_bytes`."""
    pieces: list[Piece] = []
    for source in sources:
        if _compressed(source.path):
            bounds = [(0, None)]
        else:
            cuts = [0, *_line_starts(source, piece_bytes), source.size]
            bounds = [(a, b) for a, b in itertools.pairwise(cuts) if b > a]
        for start, end in bounds:
            size = source.size if end is None else end - start
            pieces.append(
                Piece(len(pieces), source.fs, source.path, source.split, start, end, size)
            )
    return pieces


def _compressed(path: str) -> bool:
    """Whether pyarrow decompresses the file by its extension (.gz, .bz2, .zst, ...)."""
    try:
        pa.Codec.detect(path)
    except (TypeError, ValueError):
        return False
    return True


def _line_starts(source: _Source, piece_bytes: int) -> list[int]:
    """The first line start at or after each multiple of piece_bytes inside the file."""
    starts: list[int] = []
    with source.fs.open_input_file(source.path) as f:
        for cut in range(piece_bytes, source.size, piece_bytes):
            if starts and cut < starts[-1]:
                continue  # a line longer than a piece
            f.seek(cut - 1)  # a line starts at `cut` iff the byte before it ends a line
            position = cut - 1
            while chunk := f.read(_SCAN_BYTES):
                newline = chunk.find(b"\n")
                if newline >= 0:
                    starts.append(position + newline + 1)
                    break
                position += len(chunk)
    return [s for s in dict.fromkeys(starts) if s < source.size]


def _read(piece: Piece) -> bytes:
    with readable(piece.path):
        if piece.end is None:
            with piece.fs.open_input_stream(piece.path) as f:  # decompressed by extension
                return f.read()
        with piece.fs.open_input_file(piece.path) as f:
            f.seek(piece.start)
            return f.read(piece.end - piece.start)


def _lines(data: bytes) -> list[bytes]:
    """The lines of `data` as prepare_text reads them: a last line without newline counts."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def _number_lines(pieces: list[Piece], workers: int, progress: bool) -> list[Piece]:
    """Round 0: each piece with the number of its first line over all inputs."""
    counts = _run_tasks(pieces, _count_lines, workers, "count lines", progress)
    firsts = np.concatenate([[0], np.cumsum([c["lines"] for c in counts])[:-1]])
    return [replace(p, first_line=int(first)) for p, first in zip(pieces, firsts, strict=True)]


def _count_lines(piece: Piece) -> dict:
    data = _read(piece)
    return {"lines": data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)}


def _piece_texts(piece: Piece, counts: dict[str, SplitCounts], opt: TextOptions) -> dict:
    """The piece's usable lines per split (prepare's _text_blocks for one piece)."""
    raw = _lines(_read(piece))
    texts = {name: [] for name in SPLITS}
    if piece.split is not None:
        texts[piece.split] = _decode(raw, counts[piece.split])
        return texts
    to_test = _is_test(opt.seed, piece.first_line, len(raw), opt.test_fraction)
    texts["train"] = _decode(
        [s for s, t in zip(raw, to_test, strict=True) if not t], counts["train"]
    )
    texts["test"] = _decode([s for s, t in zip(raw, to_test, strict=True) if t], counts["test"])
    return texts


# -- rounds 1 and 2 ------------------------------------------------------------------------------
def _encode_piece_locally(piece: Piece, target: _Target, opt: TextOptions, max_len: int) -> dict:
    """Round 1 (word): the piece's rows in ids of its own (WordIds), its words and their
    counts in training lines (dropped lines included, as the trainer counts them)."""
    counts = {name: SplitCounts() for name in SPLITS}
    texts = _piece_texts(piece, counts, opt)
    words, found = WordIds(), {}
    for name in SPLITS:
        table, found[name] = encode_words(words, texts[name], max_len, counts[name])
        pq.write_table(table, target.file(_rows_file(piece, name)), filesystem=target.fs)
    every = words.words()
    train_counts = np.pad(found["train"], (0, len(every) - len(found["train"])))
    words_table = pa.table({"word": every, "count": train_counts})
    pq.write_table(words_table, target.file(_words_file(piece)), filesystem=target.fs)
    return {"counts": {name: asdict(c) for name, c in counts.items()}}


def _remap_piece(piece: Piece, target: _Target, opt: TextOptions) -> dict:
    """Round 2 (word): round 1's rows in the corpus's ids, written as the piece's shards."""
    words = pq.read_table(target.file(_words_file(piece)), filesystem=target.fs)["word"]
    ids = id_table(_load_tokenizer(target), words.to_pylist())
    shards, unknown = {}, {}
    for name in SPLITS:
        table = pq.read_table(target.file(_rows_file(piece, name)), filesystem=target.fs)
        table, unknown[name] = remap_rows(table, ids)
        shards[name] = _write_shards(piece, name, table, target, opt)
    return {"shards": shards, "unk_tokens": unknown}


def _count_chars(piece: Piece, target: _Target, opt: TextOptions) -> dict:
    """Round 1 (char): the code points of the piece's training lines and their counts."""
    texts = _piece_texts(piece, {name: SplitCounts() for name in SPLITS}, opt)
    counts = char_counts([texts["train"]])
    present = np.flatnonzero(counts)
    words = pa.table({"word": [chr(c) for c in present], "count": counts[present]})
    pq.write_table(words, target.file(_words_file(piece)), filesystem=target.fs)
    return {}


def _encode_piece(piece: Piece, target: _Target, opt: TextOptions, max_len: int) -> dict:
    """Round 2 (bpe, char): the piece encoded with the trained tokenizer, its shards."""
    encode = encoder(_load_tokenizer(target), opt.tokenizer)
    counts = {name: SplitCounts() for name in SPLITS}
    texts = _piece_texts(piece, counts, opt)
    shards = {}
    for name in SPLITS:
        table = encode(texts[name], max_len, counts[name])
        shards[name] = _write_shards(piece, name, table, target, opt)
    return {"counts": {name: asdict(c) for name, c in counts.items()}, "shards": shards}


def _write_shards(piece: Piece, split: str, table: pa.Table, target: _Target, opt) -> dict:
    writer = _ShardWriter(target, split, opt.shard_rows, prefix=f"{split}-{piece.index:05d}")
    writer.write(table)
    return writer.close()


def _with_unknown(counts: dict, unknown: dict) -> dict:
    return {name: {**counts[name], "unk_tokens": unknown[name]} for name in SPLITS}


def _add_counts(total: SplitCounts, counts: dict) -> None:
    for name, value in counts.items():
        setattr(total, name, getattr(total, name) + value)


def _rows_file(piece: Piece, split: str) -> str:
    return f"{PIECES_DIR}/{piece.index:05d}-{split}.parquet"


def _words_file(piece: Piece) -> str:
    return f"{PIECES_DIR}/{piece.index:05d}-words.parquet"


# -- the vocabulary ------------------------------------------------------------------------------
def _merged_tokenizer(target: _Target, pieces: list[Piece], opt: TextOptions) -> Tokenizer:
    """The tokenizer of the whole train split, from round 1's word counts."""
    tables = [pq.read_table(target.file(_words_file(p)), filesystem=target.fs) for p in pieces]
    words = pa.concat_tables(tables)
    kept = trained_vocabulary(words["word"], words["count"], vocab_size=opt.vocab_size,
                              min_frequency=opt.min_frequency)  # fmt: skip
    return wordlevel_tokenizer(opt.tokenizer, kept)


def _save_tokenizer(target: _Target, tok: Tokenizer) -> None:
    storage.fs_write(target.fs, target.file(f"{PIECES_DIR}/tokenizer.json"), tok.to_str().encode())


def _load_tokenizer(target: _Target) -> Tokenizer:
    raw = storage.fs_read(target.fs, target.file(f"{PIECES_DIR}/tokenizer.json"))
    return Tokenizer.from_str(raw.decode())


# -- Ray Data ------------------------------------------------------------------------------------
class _Rounds:
    """Runs a round's function over every piece: `run(desc, fn, **kwargs)`."""

    def __init__(self, pieces: list[Piece], workers: int, target: _Target, opt: TextOptions):
        self.pieces, self.workers, self.target, self.opt = pieces, workers, target, opt

    def __call__(self, desc: str, fn: Callable, **kwargs) -> list[dict]:
        kwargs.update(target=self.target, opt=self.opt)
        return _run_tasks(self.pieces, fn, self.workers, desc, self.opt.progress, **kwargs)


def _run_tasks(
    pieces: list[Piece], fn: Callable, workers: int, desc: str, progress: bool, **kwargs
) -> list[dict]:
    """fn(piece, **kwargs) for every piece, one Ray Data task each, at most `workers` at once;
    the results in piece order. A RayganError raised in a task is raised here."""
    import ray.data

    from raygan.run.console import verbose

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts the bytes of finished pieces
    if not verbose():  # Ray Data announces every execution (INFO) and the bar it leaves out
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    results: list[dict | None] = [None] * len(pieces)
    ids = [{"id": i} for i in range(len(pieces))]  # in the driver: no read tasks take CPUs
    rows = ray.data.from_items(ids, override_num_blocks=len(pieces)).map(
        _task, fn_kwargs={"fn": fn, "pieces": pieces, "kwargs": kwargs},
        compute=ray.data.TaskPoolStrategy(size=min(workers, len(pieces))), num_cpus=1,
    )  # fmt: skip
    with _progress(sum(p.size for p in pieces), desc, progress) as bar:
        for row in rows.iter_rows():
            result = json.loads(row["result"])
            if "error" in result:
                raise RayganError(result["error"])
            results[result["index"]] = result
            bar.update(pieces[result["index"]].size)
    return results  # type: ignore[return-value]


def _task(row: dict, *, fn: Callable, pieces: list[Piece], kwargs: dict) -> dict:
    """One piece. A user's mistake (RayganError) comes back as a result, so that the driver
    raises it as the one-line error it is; Ray would wrap it in its own traceback."""
    piece = pieces[int(row["id"])]
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the task holds one CPU, not every core
    try:
        result = fn(piece, **kwargs)
    except RayganError as error:
        result = {"error": str(error)}
    return {"result": json.dumps({"index": piece.index, **result})}
