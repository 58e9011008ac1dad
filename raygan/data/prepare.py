"""Corpora -> Parquet shards + tokenizer + manifest (`raygan prepare`); the layout is
raygan.data.layout's.

Writing is atomic on local disks (and file:// URIs): everything goes into a temporary sibling
directory that is renamed onto `out` at the end and deleted on failure. Object stores have no atomic
rename, so there prepare writes into `out` itself, manifest.json last, and deletes what it wrote on
failure; every reader refuses a directory without manifest.json as incomplete.

Shape legend: N=rows T=max_len.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from tokenizers import models
from tqdm import tqdm

from raygan import __version__
from raygan.core.errors import RayganError
from raygan.data import storage
from raygan.data.layout import (
    FORMAT_VERSION,
    MANIFEST,
    ORACLE_FILE,
    ORACLE_KINDS,
    SHARD_SCHEMA,
    SPLITS,
    TOKENIZER_FILE,
)
from raygan.data.read import oracle_from_npz
from raygan.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    TOKENIZER_KINDS,
    UNK_ID,
    build_tokenizer,
    train_tokenizer,
    trained_vocabulary,
    wordlevel_tokenizer,
)

WORD_ROWS_DIR = "_rows"  # the word tokenizer's rows in provisional ids, until its vocabulary
READ_BLOCK_BYTES = 1 << 20  # text is read, decoded and encoded ~1 MiB at a time
ORACLE_CHUNK = 2000  # oracle sequences drawn per derived seed
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
DEFAULT_TEST_FRACTION = 0.05  # held out when no test file is given: NLL_test needs a test split
LENGTH_COVERAGE = 0.99  # without max_len: the length that keeps this share of training lines ...
LENGTH_SAMPLE_LINES = 100_000  # ... measured on the first this many (a bounded extra pass)
DROPPED_WARNING_SHARE = 0.01  # more lines lost than this (too long, invalid UTF-8): a warning


# -- summary -------------------------------------------------------------------------------------
@dataclass
class SplitCounts:
    """What happened to the lines of one split."""

    lines_read: int = 0
    kept: int = 0
    dropped_empty: int = 0
    dropped_too_long: int = 0
    dropped_invalid_utf8: int = 0
    tokens: int = 0  # in kept rows, EOS included
    unk_tokens: int = 0


@dataclass
class PrepareSummary:
    out: str
    kind: str  # "text" | "oracle"
    vocab_size: int
    max_len: int
    splits: dict[str, SplitCounts] = field(default_factory=dict)
    seconds: float = 0.0
    max_len_note: str = ""  # how max_len was chosen when it was not given

    def lost_warning(self) -> str | None:
        """A warning line when more than DROPPED_WARNING_SHARE of the lines read were lost to
        the length limit or to invalid UTF-8 (empty lines are not counted as lost)."""
        read = sum(c.lines_read for c in self.splits.values())
        long = sum(c.dropped_too_long for c in self.splits.values())
        bad = sum(c.dropped_invalid_utf8 for c in self.splits.values())
        if not read or (long + bad) / read <= DROPPED_WARNING_SHARE:
            return None
        parts = [f"{long:,} longer than max_len {self.max_len} allows"] if long else []
        parts += [f"{bad:,} not valid UTF-8"] if bad else []
        hint = "; a larger --max-len keeps them" if long else ""
        return (f"warning: dropped {long + bad:,} of {read:,} lines "
                f"({(long + bad) / read:.1%}): {', '.join(parts)}{hint}")  # fmt: skip

    def to_dict(self) -> dict:
        """The manifest's copy: counts only (no timing, so equal inputs give equal manifests)."""
        return {name: asdict(counts) for name, counts in self.splits.items()}

    def table(self) -> str:
        """A Markdown table of the counts per split."""
        cols = ("lines_read", "kept", "dropped_empty", "dropped_too_long", "dropped_invalid_utf8")
        cols += ("tokens", "unk_tokens")
        lines = ["| split | " + " | ".join(c.replace("_", " ") for c in cols) + " |"]
        lines.append("|---" * (len(cols) + 1) + "|")
        for name, counts in self.splits.items():
            lines.append(
                f"| {name} | " + " | ".join(f"{getattr(counts, c):,}" for c in cols) + " |"
            )
        return "\n".join(lines)


class _Output:
    """Where prepare writes and how the result is published (see the module docstring)."""

    def __init__(self, out: str, overwrite: bool):
        self.uri = out
        self.fs, self.path = storage.filesystem(out)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        kind = storage.fs_type(self.fs, self.path)
        if kind == pafs.FileType.File:
            raise RayganError(f"output {out} exists and is a file, not a directory")
        self.existed = kind == pafs.FileType.Directory
        if self.existed and not overwrite and self._entries():
            raise RayganError(
                f"output directory {out} is not empty; pass --overwrite (overwrite=True) to replace it"
            )
        if self.local:
            parent, name = os.path.split(self.path)
            self.dir = storage.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
        else:
            self.dir = self.path
            if self.existed:
                self.fs.delete_dir_contents(self.path)
        self.fs.create_dir(self.dir, recursive=True)

    def _entries(self) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))

    def file(self, name: str) -> str:
        return storage.join(self.dir, name)

    def commit(self) -> None:
        if not self.local:
            return  # written in place; manifest.json, written last, marks it complete
        if self.existed:  # an empty directory or, with overwrite, the previous corpus
            old = f"{self.dir}.old"
            self.fs.move(self.path, old)
            self.fs.move(self.dir, self.path)
            self.fs.delete_dir(old)
        else:
            self.fs.move(self.dir, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            if self.local or not self.existed:
                self.fs.delete_dir(self.dir)
            else:
                self.fs.delete_dir_contents(self.dir)


@contextlib.contextmanager
def _publish(out: str, overwrite: bool) -> Iterator[_Output]:
    output = _Output(out, overwrite)
    try:
        yield output
    except BaseException:
        output.abort()
        raise
    output.commit()


# -- shards --------------------------------------------------------------------------------------
class _ShardWriter:
    """Appends rows to `{prefix}-00000.parquet`, ... of `shard_rows` rows each (the prefix is
    the split's name unless given). `output` is anything with `fs` and `file(name)`."""

    def __init__(self, output: _Output, split: str, shard_rows: int, prefix: str | None = None):
        self.output, self.shard_rows = output, shard_rows
        self.prefix = prefix or split
        self.shards: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                name = f"{self.prefix}-{len(self.shards):05d}.parquet"
                self._writer = pq.ParquetWriter(
                    self.output.file(name),
                    SHARD_SCHEMA,
                    filesystem=self.output.fs,
                    compression="zstd",
                )
            take = min(table.num_rows, self.shard_rows - self._rows)
            self._writer.write_table(table.slice(0, take))
            self._rows += take
            table = table.slice(take)
            if self._rows == self.shard_rows:
                self._finish_shard()

    def close(self) -> dict:
        """The split's manifest entry: total rows and every shard's {file, rows, sha256}."""
        if self._writer is not None:
            self._finish_shard()
        return {"rows": sum(s["rows"] for s in self.shards), "shards": self.shards}

    def _finish_shard(self) -> None:
        self._writer.close()
        name = f"{self.prefix}-{len(self.shards):05d}.parquet"
        sha = storage.fs_sha256(self.output.fs, self.output.file(name))
        self.shards.append({"file": name, "rows": self._rows, "sha256": sha})
        self._writer, self._rows = None, 0


def _rows_table(rows: list[list[int]]) -> tuple[pa.Table, np.ndarray]:
    """The shard table of token-id rows, and their ids back to back (int32).

    Built from one flat array and the offsets, not with pa.array(rows): 13x faster for a block of
    40,000 lines (0.017 s against 0.23 s; the same array, checked with Array.equals)."""
    lengths_N = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths_N, out=offsets[1:])
    values = np.fromiter(
        itertools.chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1])
    )
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.Table.from_arrays([tokens, pa.array(lengths_N)], schema=SHARD_SCHEMA), values


def _fixed_length_table(tokens_NT: np.ndarray) -> pa.Table:
    N, T = tokens_NT.shape
    offsets = pa.array(np.arange(0, N * T + 1, T, dtype=np.int32))
    tokens = pa.ListArray.from_arrays(offsets, pa.array(tokens_NT.ravel().astype(np.int32)))
    lengths = pa.array(np.full(N, T, dtype=np.int32))
    return pa.Table.from_arrays([tokens, lengths], schema=SHARD_SCHEMA)


# -- text corpora --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    split: str | None  # None: each line's split is drawn by _is_test
    fs: pafs.FileSystem
    path: str
    size: int


def _sources(inputs: list[str], test_inputs: list[str] | None) -> list[_Source]:
    named = [(None if test_inputs is None else "train", p) for p in inputs]
    named += [("test", p) for p in test_inputs or []]
    sources = []
    for split, given in named:
        fs, path = storage.filesystem(given)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            problem = "is a directory" if info.type == pafs.FileType.Directory else "does not exist"
            raise RayganError(f"input file {given} {problem}")
        sources.append(_Source(split, fs, path, info.size or 0))
    return sources


def _line_blocks(source: _Source, bar: tqdm) -> Iterator[list[bytes]]:
    """The file's lines as raw bytes, ~1 MiB at a time (.gz/.bz2/.zst decompressed by extension)."""
    tail = b""
    with readable(source.path), source.fs.open_input_stream(source.path) as f:
        while block := f.read(READ_BLOCK_BYTES):
            bar.update(len(block))
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            yield lines
    if tail:
        yield [tail]


@contextlib.contextmanager
def readable(path: str) -> Iterator[None]:
    """An input that cannot be read (a truncated .gz, a file gone) is a one-line error naming it."""
    try:
        yield
    except OSError as error:
        raise RayganError(f"input file {path} cannot be read: {error}") from None


def _is_test(seed: int, first: int, n: int, fraction: float) -> np.ndarray:
    """Line i (counted over all inputs) is held out iff splitmix64(i, seed) < fraction * 2**64.

    Deterministic and stateless, so it streams: the same lines go to test in both passes.
    """
    with np.errstate(over="ignore"):
        x = np.arange(first, first + n, dtype=np.uint64) * np.uint64(_SPLITMIX_GAMMA)
        x += np.uint64(seed % 2**64)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x < np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))


def _decode(raw_lines: list[bytes], counts: SplitCounts) -> list[str]:
    """Strictly decoded, stripped, non-empty lines; the others are counted as dropped."""
    texts = []
    for raw in raw_lines:
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            counts.dropped_invalid_utf8 += 1
            continue
        if text:
            texts.append(text)
        else:
            counts.dropped_empty += 1
    counts.lines_read += len(raw_lines)
    return texts


def _text_blocks(
    sources: list[_Source], counts: dict[str, SplitCounts], bar: tqdm, *, fraction: float, seed: int
) -> Iterator[dict[str, list[str]]]:
    """Usable lines per split, one block at a time."""
    index = 0
    for source in sources:
        for raw in _line_blocks(source, bar):
            if source.split is not None:
                yield {source.split: _decode(raw, counts[source.split])}
            else:
                to_test = _is_test(seed, index, len(raw), fraction)
                test = [line for line, t in zip(raw, to_test, strict=True) if t]
                train = [line for line, t in zip(raw, to_test, strict=True) if not t]
                yield {
                    "train": _decode(train, counts["train"]),
                    "test": _decode(test, counts["test"]),
                }
            index += len(raw)


def _encode(tokenizer, texts: list[str], max_len: int, counts: SplitCounts) -> pa.Table:
    """Token ids + EOS of each line; lines over max_len - 1 tokens are dropped."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    return _encoded_rows((enc.ids for enc in encodings), max_len, counts)


def encoder(tokenizer, kind: str):
    """_encode for `tokenizer`: (texts, max_len, counts) -> table. The char tokenizer's is
    _encode_chars: the same ids from numpy, without the tokenizer's regex pass; bpe's is BpeWords:
    the same ids, each distinct word through the model once."""
    if kind == "bpe":
        return BpeWords(tokenizer).encode
    if kind != "char":
        return functools.partial(_encode, tokenizer)
    lookup = np.full(MAX_CODE_POINT, UNK_ID, dtype=np.int32)
    for token, i in tokenizer.get_vocab().items():
        if len(token) == 1:  # the special tokens are longer
            lookup[ord(token)] = i
    return functools.partial(_encode_chars, lookup)


class BpeWords:
    """The bpe tokenizer's rows, one word at a time: its pipeline is NFC, then Metaspace (every
    space becomes ▁, one is put in front, each ▁ starts a word), then the BPE model on
    each word alone, so a word's ids are the same wherever it occurs. Each distinct word goes
    through the model once (up to CACHE_WORDS kept); an ASCII line is already NFC and is split
    with str.split, any other through the tokenizer's own normalizer and pre-tokenizer. 7x
    faster than encode_batch (BENCHMARKS.md, prepare section)."""

    CACHE_WORDS = 1_000_000

    def __init__(self, tokenizer) -> None:
        self._normalize = tokenizer.normalizer.normalize_str
        self._split = tokenizer.pre_tokenizer.pre_tokenize_str
        self._model = tokenizer.model
        self._ids: dict[str, list[int]] = {}

    def encode(self, texts: list[str], max_len: int, counts: SplitCounts) -> pa.Table:
        with _without_gc():
            rows = [self._line(text) for text in texts]
        return _encoded_rows(rows, max_len, counts)

    def _line(self, text: str) -> list[int]:
        if text.isascii():  # no ▁ in it, and NFC already
            words = [SPACE + word for word in text.split(" ")]
        else:
            words = [word for word, _ in self._split(self._normalize(text))]
        row: list[int] = []
        get = self._ids.get
        for word in words:
            ids = get(word)
            row += ids if ids is not None else self._word(word)
        return row

    def _word(self, word: str) -> list[int]:
        if len(self._ids) >= self.CACHE_WORDS:
            self._ids.clear()
        ids = self._ids[word] = [token.id for token in self._model.tokenize(word)]
        return ids


SPACE = "\u2581"  # Metaspace's replacement for " "


# -- the char tokenizer without its regex pass ---------------------------------------------------
MAX_CODE_POINT = 0x110000


def code_points(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The char tokenizer's tokens of every line, one per code point (its regex `(?m).` matches
    each one), back to back (uint32), and each line's count."""
    lengths_N = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32), lengths_N


def char_counts(batches) -> np.ndarray:
    """How often each code point occurs in the lines of `batches` (MAX_CODE_POINT counts)."""
    total = np.zeros(MAX_CODE_POINT, dtype=np.int64)
    for texts in batches:
        total += np.bincount(code_points(texts)[0], minlength=MAX_CODE_POINT)
    return total


def char_tokenizer(counts: np.ndarray, *, vocab_size: int | None, min_frequency: int):
    """The char tokenizer train_tokenizer would train on lines with these code-point counts."""
    present = np.flatnonzero(counts)
    words = [chr(c) for c in present]
    kept = trained_vocabulary(words, counts[present], vocab_size=vocab_size,
                              min_frequency=min_frequency)  # fmt: skip
    return wordlevel_tokenizer("char", kept)


def _encode_chars(lookup: np.ndarray, texts: list[str], max_len: int, counts: SplitCounts):
    """_encode for the char tokenizer: ids through a code-point table (a stripped, non-empty line
    has a token per character, so none is dropped as empty)."""
    codes, lengths_N = code_points(texts)
    keep_N = lengths_N < max_len  # room for EOS
    ids = lookup[codes[np.repeat(keep_N, lengths_N)]]
    kept_N = lengths_N[keep_N] + 1
    offsets = np.zeros(len(kept_N) + 1, dtype=np.int32)
    np.cumsum(kept_N, out=offsets[1:])
    values = np.full(int(offsets[-1]), EOS_ID, dtype=np.int32)
    token_mask = np.ones(len(values), dtype=bool)
    token_mask[offsets[1:] - 1] = False  # the last of each row stays EOS
    values[token_mask] = ids
    counts.dropped_too_long += int(np.count_nonzero(~keep_N))
    counts.kept += len(kept_N)
    counts.tokens += len(values)
    counts.unk_tokens += int(np.count_nonzero(values == UNK_ID))
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.Table.from_arrays([tokens, pa.array(kept_N.astype(np.int32))], schema=SHARD_SCHEMA)


def _encoded_rows(lines_ids: Iterable[list[int]], max_len: int, counts: SplitCounts) -> pa.Table:
    """_encode's rows from each line's token ids (lists it may append EOS to)."""
    rows = []
    for ids in lines_ids:
        if not ids:  # only characters the tokenizer removes
            counts.dropped_empty += 1
        elif len(ids) >= max_len:
            counts.dropped_too_long += 1
        else:
            ids.append(EOS_ID)
            rows.append(ids)
    table, values = _rows_table(rows)
    counts.kept += len(rows)
    counts.tokens += len(values)
    counts.unk_tokens += int(np.count_nonzero(values == UNK_ID))
    return table


# -- the word tokenizer in one pass --------------------------------------------------------------
class WordIds:
    """The word tokenizer's tokens of lines as ids of a vocabulary that grows as words turn up.

    Each line goes through the tokenizer's own normalizer and pre-tokenizer (so these are exactly
    its words) once: that one pass gives both the counts the vocabulary is built from and every
    row, kept in these ids until the vocabulary is known (`id_table` then maps them). Training
    the tokenizer and encoding with it would run the pre-tokenizer, nearly all of the cost, twice.
    The special tokens keep ids 0-3 (no word can be one: the pre-tokenizer splits off < and >), so
    an EOS appended to a row maps to EOS.

    `threads` (default: whether the tokenizers pool has more than one, `pool_threads`): run the
    lines through the pool (encode_batch) with the words known so far as its vocabulary, and only
    the lines with a word it does not know through the one-line path; that vocabulary is rebuilt
    once it lacks REBUILD_SHARE of the words, and a batch after one where more than SLOW_SHARE
    of the lines had a new word (the first, say) takes the one-line path alone. On one thread
    the one-line path alone is faster (no second look at lines with a new word); on two, the
    pool is faster (BENCHMARKS.md, prepare section).
    """

    REBUILD_SHARE = 0.05
    SLOW_SHARE = 0.5

    def __init__(self, *, threads: bool | None = None) -> None:
        if threads is None:
            threads = pool_threads() > 1
        tok = build_tokenizer("word")
        self._normalize = tok.normalizer.normalize_str
        self._split = tok.pre_tokenizer.pre_tokenize_str
        self.ids = {name: i for i, name in enumerate(SPECIAL_TOKENS)}
        self._tok = tok if threads else None
        self._known = 0  # words in the pool's vocabulary
        self._slow = 1.0  # the share of the last batch's lines that had a word the pool lacked

    def _learn(self) -> None:
        """The thread pool's vocabulary: every word so far."""
        if self._tok is not None:
            self._tok.model = models.WordLevel(self.ids, unk_token=SPECIAL_TOKENS[UNK_ID])
            self._known = len(self.ids)

    def encode(self, texts: list[str]) -> list[list[int]]:
        with _without_gc():  # short-lived lists and tuples, no cycles: 6% of the time
            if self._tok is None or self._slow > self.SLOW_SHARE:
                rows = [self._encode_line(text) for text in texts]
                self._slow = 0.0  # unknown: try the pool next
            else:
                encodings = self._tok.encode_batch(texts, add_special_tokens=False)
                rows = [enc.ids for enc in encodings]
                slow = [i for i, row in enumerate(rows) if UNK_ID in row]
                for i in slow:
                    rows[i] = self._encode_line(texts[i])
                self._slow = len(slow) / max(len(texts), 1)
        if self._tok is not None and len(self.ids) - self._known > self.REBUILD_SHARE * self._known:
            self._learn()
        return rows

    def _encode_line(self, text: str) -> list[int]:
        # The normalizer lowercases and rewrites " and '' (nltk's quotes): on ASCII without them
        # str.lower() gives the same string, ~25x faster than the normalizer's call.
        plain = text.isascii() and '"' not in text and "''" not in text
        words = self._split(text.lower() if plain else self._normalize(text))
        get = self.ids.get
        row = [get(word) for word, _ in words]
        if None in row:  # a new word: the next id
            ids = self.ids
            row = [ids.setdefault(word, len(ids)) for word, _ in words]
        return row

    def words(self) -> list[str]:
        """Every word so far, in id order."""
        return list(self.ids)


@contextlib.contextmanager
def _without_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def pool_threads() -> int:
    """The threads the tokenizers library encodes a batch on, by its rules: 1 when
    TOKENIZERS_PARALLELISM is off, else RAYON_NUM_THREADS, else the CPUs this process may use."""
    if os.environ.get("TOKENIZERS_PARALLELISM", "true").lower() in _OFF:
        return 1
    threads = os.environ.get("RAYON_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        return int(threads)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


_OFF = ("", "off", "false", "f", "no", "n", "0")  # tokenizers' own list


def encode_words(
    words: WordIds, texts: list[str], max_len: int, counts: SplitCounts
) -> tuple[pa.Table, np.ndarray]:
    """_encode's rows in `words`' ids, and how often each id occurs in `texts` (dropped lines
    included, as the tokenizer's trainer counts them)."""
    lines_ids = words.encode(texts)
    every = np.fromiter(itertools.chain.from_iterable(lines_ids), dtype=np.int64)
    return _encoded_rows(lines_ids, max_len, counts), np.bincount(every, minlength=len(words.ids))


def word_tokenizer(words, counts: np.ndarray, *, vocab_size: int | None, min_frequency: int):
    """The word tokenizer train_tokenizer would train on lines with these word counts."""
    counts = np.pad(counts, (0, len(words) - len(counts)))
    kept = trained_vocabulary(words, counts, vocab_size=vocab_size, min_frequency=min_frequency)
    return wordlevel_tokenizer("word", kept)


def id_table(tok, words: list[str]) -> np.ndarray:
    """The id in `tok`'s vocabulary (UNK if none) of each of `words`, by their index."""
    vocab = tok.get_vocab()
    return np.array([vocab.get(w, UNK_ID) for w in words], dtype=np.int32)


def remap_rows(table: pa.Table, ids: np.ndarray) -> tuple[pa.Table, int]:
    """`table`'s rows with every token t replaced by ids[t], and how many of them are UNK."""
    if not table.num_rows:
        return table, 0
    tokens = table.column("tokens").combine_chunks()
    values = ids[tokens.flatten().to_numpy()]
    offsets = pc.subtract(tokens.offsets, tokens.offsets[0])  # a slice's start at 0
    tokens = pa.ListArray.from_arrays(offsets, pa.array(values, type=pa.int32()))
    return table.set_column(0, "tokens", tokens), int(np.count_nonzero(values == UNK_ID))


def _progress(total: int, desc: str, progress: bool) -> tqdm:
    # disable=None: tqdm turns itself off when stderr is not a terminal
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, disable=None if progress else True
    )


def prepare_text(
    inputs: list[str],
    out: str,
    *,
    tokenizer: str = "word",
    max_len: int | None = None,
    shard_rows: int = 100_000,
    test_inputs: list[str] | None = None,
    test_fraction: float | None = None,
    vocab_size: int | None = None,
    min_frequency: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
    piece_mb: float = 64.0,
) -> PrepareSummary:
    """Tokenize UTF-8 text files (one sentence per line) into Parquet shards under `out`.

    Streaming (memory stays flat), ~1 MiB blocks at a time. bpe: train the tokenizer on the train
    split, then encode the blocks into shards a word at a time (BpeWords); char: count code
    points, then numpy ids; word: one pass of the pre-tokenizer (WordIds) that keeps the rows in
    provisional ids and counts the training lines' words, then the rows through the
    vocabulary's id table. Lines are stripped; empty lines, invalid UTF-8 and lines over
    `max_len - 1` tokens (`max_len` counts the EOS) are dropped and counted. Without `max_len`,
    a bounded pass picks the length that keeps LENGTH_COVERAGE of the first LENGTH_SAMPLE_LINES
    training lines (the summary's max_len_note says so). The test split is `test_inputs`, or
    else a `test_fraction` of the lines (DEFAULT_TEST_FRACTION when neither is given; 0 for
    none) drawn by a hash of (seed, line number). The tokenizer sees only train lines: test
    words unseen in train become UNK.

    `workers`: build the corpus with that many Ray Data tasks instead (raygan.data.distributed:
    the inputs cut into pieces of ~`piece_mb` MB at line starts): the same rows in the same order
    with the same ids, in one or more shards per piece.
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    if test_fraction is None:
        test_fraction = 0.0 if test_inputs else DEFAULT_TEST_FRACTION
    _check_text_options(inputs, tokenizer, max_len, shard_rows, test_inputs, test_fraction)
    _check_vocab(vocab_size, min_frequency)
    if workers is not None and (workers < 1 or piece_mb <= 0):
        raise RayganError(f"need workers >= 1 and piece_mb > 0, got {workers} and {piece_mb}")
    sources = _sources(inputs, test_inputs)
    options = TextOptions(tokenizer, max_len, shard_rows, test_fraction, vocab_size,
                          min_frequency, seed, progress)  # fmt: skip
    started = time.perf_counter()
    with _publish(out, overwrite) as output:
        if workers is None:
            tok, summary, splits = _build_text(sources, output, options)
        else:
            from raygan.data.distributed import build_text  # Ray only when asked for

            tok, summary, splits = build_text(
                sources, output, options, workers=workers, piece_bytes=int(piece_mb * 1e6)
            )
        if splits["train"]["rows"] == 0:
            raise RayganError(
                f"no training line of {', '.join(inputs)} was kept: {summary.splits['train']}"
            )
        storage.fs_write(output.fs, output.file(TOKENIZER_FILE), tok.to_str().encode())
        source = {"inputs": inputs, "test_inputs": test_inputs, "test_fraction": test_fraction}
        source.update(seed=seed, min_frequency=min_frequency, requested_vocab_size=vocab_size)
        source.update(max_len_note=summary.max_len_note or None)
        manifest = _manifest(summary, splits, tokenizer=tokenizer, source=source)
        storage.fs_write(output.fs, output.file(MANIFEST), json.dumps(manifest, indent=2).encode())
    summary.seconds = time.perf_counter() - started
    return summary


@dataclass(frozen=True)
class TextOptions:
    """prepare_text's options that decide the rows (checked by prepare_text)."""

    tokenizer: str
    max_len: int | None
    shard_rows: int
    test_fraction: float
    vocab_size: int | None
    min_frequency: int
    seed: int
    progress: bool


def _build_text(sources: list[_Source], output: _Output, opt: TextOptions):
    """One process: (tokenizer, summary, the manifest's splits)."""
    train_sources = [s for s in sources if s.split != "test"]
    if opt.tokenizer == "word":
        return _build_words(sources, train_sources, output, opt)
    tok = _train(train_sources, opt.tokenizer, opt.vocab_size, opt.min_frequency,
                 opt.test_fraction, opt.seed, opt.progress)  # fmt: skip
    max_len, note = max_len_of(opt, train_sources, tok)
    summary = PrepareSummary(output.uri, "text", tok.get_vocab_size(), max_len, max_len_note=note)
    summary.splits = {name: SplitCounts() for name in SPLITS}
    writers = {name: _ShardWriter(output, name, opt.shard_rows) for name in SPLITS}
    encode = encoder(tok, opt.tokenizer)
    with _progress(sum(s.size for s in sources), "encode", opt.progress) as bar:
        for texts in _text_blocks(
            sources, summary.splits, bar, fraction=opt.test_fraction, seed=opt.seed
        ):
            for name, lines in texts.items():
                writers[name].write(encode(lines, max_len, summary.splits[name]))
    return tok, summary, {name: writer.close() for name, writer in writers.items()}


def _build_words(sources, train_sources, output: _Output, opt: TextOptions):
    """_build_text for the word tokenizer, in one pass over the text (WordIds): the rows go to
    WORD_ROWS_DIR in provisional ids, then, once the training lines' counts give the vocabulary,
    through its id table into the shards."""
    max_len, note = max_len_of(opt, train_sources)
    counts = {name: SplitCounts() for name in SPLITS}
    words, train_counts = WordIds(), np.zeros(0, dtype=np.int64)
    rows = {name: output.file(f"{WORD_ROWS_DIR}/{name}.parquet") for name in SPLITS}
    output.fs.create_dir(output.file(WORD_ROWS_DIR), recursive=True)
    with contextlib.ExitStack() as stack:
        writers = {
            name: stack.enter_context(pq.ParquetWriter(path, SHARD_SCHEMA, filesystem=output.fs))
            for name, path in rows.items()
        }
        bar = stack.enter_context(_progress(sum(s.size for s in sources), "encode", opt.progress))
        for texts in _text_blocks(sources, counts, bar, fraction=opt.test_fraction, seed=opt.seed):
            for name, lines in texts.items():
                table, found = encode_words(words, lines, max_len, counts[name])
                writers[name].write_table(table)
                if name == "train":
                    train_counts = np.pad(train_counts, (0, len(found) - len(train_counts)))
                    train_counts += found
    tok = word_tokenizer(words.words(), train_counts, vocab_size=opt.vocab_size,
                         min_frequency=opt.min_frequency)  # fmt: skip
    ids = id_table(tok, words.words())
    shards = {}
    for name, path in rows.items():
        writer = _ShardWriter(output, name, opt.shard_rows)
        with output.fs.open_input_file(path) as f:
            blocks = pq.ParquetFile(f)  # a row group per block read: the shards' row groups
            for i in range(blocks.num_row_groups):
                table, unknown = remap_rows(blocks.read_row_group(i), ids)
                writer.write(table)
                counts[name].unk_tokens += unknown
        shards[name] = writer.close()
    output.fs.delete_dir(output.file(WORD_ROWS_DIR))
    summary = PrepareSummary(output.uri, "text", tok.get_vocab_size(), max_len, max_len_note=note)
    summary.splits = counts
    return tok, summary, shards


def max_len_of(opt: TextOptions, train_sources, tok=None) -> tuple[int, str]:
    """opt.max_len, or the covering length counted with `tok`; by default a word or char
    tokenizer with no vocabulary, whose lines have as many tokens as the trained one's."""
    if opt.max_len is not None:
        return opt.max_len, ""
    if tok is None:
        tok = wordlevel_tokenizer(opt.tokenizer, [])
    return _covering_length(tok, train_sources, opt.test_fraction, opt.seed)


def _train(sources, kind, vocab_size, min_frequency, fraction, seed, progress):
    counts = {name: SplitCounts() for name in SPLITS}
    with _progress(sum(s.size for s in sources), "train tokenizer", progress) as bar:
        blocks = _text_blocks(sources, counts, bar, fraction=fraction, seed=seed)
        train_lines = (texts["train"] for texts in blocks if texts.get("train"))
        if kind == "char":
            return char_tokenizer(char_counts(train_lines), vocab_size=vocab_size,
                                  min_frequency=min_frequency)  # fmt: skip
        return train_tokenizer(
            kind, train_lines, vocab_size=vocab_size, min_frequency=min_frequency
        )


def _covering_length(tok, sources, fraction: float, seed: int) -> tuple[int, str]:
    """max_len (EOS included) keeping LENGTH_COVERAGE of the first LENGTH_SAMPLE_LINES training
    lines, and a line saying so."""
    lengths: list[int] = []
    counts = {name: SplitCounts() for name in SPLITS}
    with _progress(0, "lengths", False) as bar:
        for texts in _text_blocks(sources, counts, bar, fraction=fraction, seed=seed):
            lines = texts.get("train", [])[: LENGTH_SAMPLE_LINES - len(lengths)]
            lengths += [len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False)]
            if len(lengths) >= LENGTH_SAMPLE_LINES:
                break
    lengths = [n for n in lengths if n]  # lines of only removed characters are dropped anyway
    if not lengths:
        return 2, "no training line has a token"
    ordered = sorted(lengths)
    longest = ordered[max(0, math.ceil(LENGTH_COVERAGE * len(ordered)) - 1)]
    max_len = max(2, longest + 1)
    kept = sum(n < max_len for n in ordered) / len(ordered)
    return max_len, (
        f"max_len {max_len} (not given): keeps {kept:.1%} of the first {len(ordered):,} "
        f"training lines, the longest of which has {ordered[-1] + 1} tokens with EOS"
    )


def _check_text_options(inputs, tokenizer, max_len, shard_rows, test_inputs, test_fraction) -> None:
    if not inputs:
        raise RayganError("inputs is empty: give at least one text file (--input FILE)")
    if tokenizer not in TOKENIZER_KINDS:
        raise RayganError(
            f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}; got {tokenizer!r}"
        )
    if max_len is not None and max_len < 2:
        raise RayganError(f"max_len must be >= 2 (one token and EOS), got {max_len}")
    if shard_rows < 1:
        raise RayganError(f"shard_rows must be >= 1, got {shard_rows}")
    if not 0.0 <= test_fraction < 1.0:
        raise RayganError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if test_inputs and test_fraction:
        raise RayganError(
            "give test_inputs (--test-input) or test_fraction (--test-fraction), not both"
        )


def _check_vocab(vocab_size: int | None, min_frequency: int) -> None:
    if vocab_size is not None and vocab_size <= len((PAD_ID, BOS_ID, EOS_ID, UNK_ID)):
        raise RayganError(f"vocab_size must be > 4 (the special tokens), got {vocab_size}")
    if min_frequency < 1:
        raise RayganError(f"min_frequency must be >= 1, got {min_frequency}")


def _manifest(summary: PrepareSummary, splits: dict, *, tokenizer, source, oracle=None) -> dict:
    text = summary.kind == "text"
    specials = {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "unk": UNK_ID}
    return {
        "format_version": FORMAT_VERSION,
        "kind": summary.kind,
        "tokenizer": tokenizer,
        "tokenizer_file": TOKENIZER_FILE if text else None,
        "vocab_size": summary.vocab_size,
        "max_len": summary.max_len,
        "special_ids": specials if text else None,
        # ModelConfig's names: build one with ModelConfig(**model_config_kwargs(manifest), ...)
        "start_id": BOS_ID if text else 0,
        "eos_id": EOS_ID if text else None,
        "pad_id": PAD_ID if text else None,
        "splits": splits,
        "summary": summary.to_dict(),
        "source": source,
        "oracle": oracle,
        "raygan_version": __version__,
    }


# -- oracle corpora ------------------------------------------------------------------------------
def prepare_oracle(
    out: str,
    *,
    oracle: str,
    num_samples: int = 10_000,
    num_test: int = 10_000,
    oracle_path: str | None = None,
    vocab_size: int | None = None,
    max_len: int = 20,
    seed: int = 0,
    shard_rows: int = 100_000,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Sample a synthetic corpus from an oracle LSTM into Parquet shards under `out`.

    `seqgan`: SeqGAN's oracle read from `oracle_path` (its vocab, 5000, is the file's); `random`: a
    seeded random oracle (vocab_size default 5000). Sequences are fixed-length (max_len), the start
    token is 0, there is no EOS or PAD. Train and test come from different derived seeds.
    """
    if num_samples < 1 or num_test < 0:
        raise RayganError(f"need num_samples >= 1 and num_test >= 0, got {num_samples}, {num_test}")
    if max_len < 1 or shard_rows < 1 or seed < 0:
        raise RayganError(
            f"need max_len >= 1, shard_rows >= 1, seed >= 0; got {max_len}, {shard_rows}, {seed}"
        )
    model, description, npz = _build_oracle(oracle, oracle_path, vocab_size, max_len, seed)
    started = time.perf_counter()
    with _publish(out, overwrite) as output:
        if npz is not None:
            storage.fs_write(output.fs, output.file(ORACLE_FILE), npz)
        summary = PrepareSummary(out, "oracle", model.cfg.vocab_size, max_len)
        splits = {}
        with tqdm(
            total=num_samples + num_test, desc="sample", disable=None if progress else True
        ) as bar:
            for code, (name, num) in enumerate((("train", num_samples), ("test", num_test))):
                writer = _ShardWriter(output, name, shard_rows)
                for chunk, start in enumerate(range(0, num, ORACLE_CHUNK)):
                    n = min(ORACLE_CHUNK, num - start)
                    generator = torch.Generator().manual_seed(_derive_seed(seed, code, chunk))
                    tokens_NT = model.sample(n, generator=generator, max_len=max_len).tokens_BT
                    writer.write(_fixed_length_table(tokens_NT.numpy()))
                    bar.update(n)
                splits[name] = writer.close()
                summary.splits[name] = SplitCounts(num, num, tokens=num * max_len)
        manifest = _manifest(
            summary, splits, tokenizer=None, source=description, oracle=description
        )
        storage.fs_write(output.fs, output.file(MANIFEST), json.dumps(manifest, indent=2).encode())
    summary.seconds = time.perf_counter() - started
    return summary


def _derive_seed(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _build_oracle(kind, path, vocab_size, max_len, seed):
    """(oracle, its manifest description, npz bytes to copy or None)."""
    from raygan.core.models import Oracle

    if kind not in ORACLE_KINDS:
        raise RayganError(f"oracle must be one of {', '.join(ORACLE_KINDS)}; got {kind!r}")
    if kind == "random":
        vocab_size = 5000 if vocab_size is None else vocab_size
        if vocab_size < 2:
            raise RayganError(f"vocab_size must be >= 2, got {vocab_size}")
        model = Oracle.random(vocab_size=vocab_size, max_len=max_len, seed=seed)
        return model, _oracle_description(model, kind, seed, max_len, None, None), None
    if path is None:
        raise RayganError(
            "oracle 'seqgan' needs oracle_path (--oracle-path FILE: target_params.npz)"
        )
    fs, inner = storage.filesystem(path)
    if storage.fs_type(fs, inner) != pafs.FileType.File:
        raise RayganError(f"oracle_path {path} does not exist")
    npz = storage.fs_read(fs, inner)
    model = oracle_from_npz(npz, path)
    if vocab_size is not None and vocab_size != model.cfg.vocab_size:
        raise RayganError(
            f"vocab_size {vocab_size} != {model.cfg.vocab_size} of oracle file {path}"
        )
    sha = hashlib.sha256(npz).hexdigest()
    return model, _oracle_description(model, kind, seed, max_len, path, sha), npz


def _oracle_description(model, kind, seed, max_len, path, sha) -> dict:
    cfg = model.cfg
    return {
        "kind": kind,
        "seed": seed,
        "path": path,
        "sha256": sha,
        "file": ORACLE_FILE if path else None,
        "vocab_size": cfg.vocab_size,
        "max_len": max_len,
        "embed_dim": cfg.g_embed_dim,
        "hidden_dim": cfg.g_hidden_dim,
    }
