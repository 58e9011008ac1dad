"""Corpora -> Parquet shards + tokenizer + manifest (`raygan prepare`), and reading them back.

A prepared directory (a local path or a pyarrow URI: file://, s3://, gs://) holds
  manifest.json        format, kind, tokenizer, vocab_size, special ids, max_len, every shard with its
                       rows and sha256, the prepare summary and the source; written LAST
  tokenizer.json       text corpora: the HF tokenizer (raygan.tokenizer)
  oracle.npz           SeqGAN-oracle corpora: a copy of the oracle, so the directory stands alone
  train-00000.parquet  tokens: list<int32> (EOS included, no padding), length: int32
  test-00000.parquet   the held-out split, same schema

Writing is atomic on local disks (and file:// URIs): everything goes into a temporary sibling
directory that is renamed onto `out` at the end and deleted on failure. Object stores have no atomic
rename, so there prepare writes into `out` itself, manifest.json last, and deletes what it wrote on
failure; every reader refuses a directory without manifest.json as incomplete.

Reading needs no Ray: `verify` checks everything (sha256 included), `read_split` returns a whole split
padded (evaluation), `RankBatches` yields one DDP rank's training batches.

Shape legend: N=rows B=batch T=max_len.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
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
from tqdm import tqdm

from raygan import __version__, storage
from raygan.errors import RayganError
from raygan.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    TOKENIZER_KINDS,
    UNK_ID,
    Codec,
    train_tokenizer,
)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "Codec",
    "PrepareSummary",
    "RankBatches",
    "SplitCounts",
    "add_prepare_arguments",
    "load_codec",
    "load_manifest",
    "load_oracle",
    "model_config_kwargs",
    "prepare_oracle",
    "prepare_text",
    "read_split",
    "run_prepare",
    "verify",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
ORACLE_FILE = "oracle.npz"
SPLITS = ("train", "test")
ORACLE_KINDS = ("seqgan", "random")
SHARD_SCHEMA = pa.schema([("tokens", pa.list_(pa.int32())), ("length", pa.int32())])
READ_BLOCK_BYTES = 1 << 20  # text is read, decoded and encoded ~1 MiB at a time
HASH_BLOCK_BYTES = 1 << 20  # sha256 streams files in blocks of this size
ORACLE_CHUNK = 2000  # oracle sequences drawn per derived seed
_SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
DEFAULT_TEST_FRACTION = 0.05  # held out when no test file is given: NLL_test needs a test split
LENGTH_COVERAGE = 0.99  # without max_len: the length that keeps this share of training lines ...
LENGTH_SAMPLE_LINES = 100_000  # ... measured on the first this many (a bounded third pass)
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


# -- filesystems ---------------------------------------------------------------------------------
_filesystem = storage.filesystem
_join = storage.join


def _file_type(fs: pafs.FileSystem, path: str) -> pafs.FileType:
    return fs.get_file_info(path).type


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def _write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path, compression=None) as f:
        f.write(data)


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as f:
        while block := f.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class _Output:
    """Where prepare writes and how the result is published (see the module docstring)."""

    def __init__(self, out: str, overwrite: bool):
        self.uri = out
        self.fs, self.path = _filesystem(out)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        kind = _file_type(self.fs, self.path)
        if kind == pafs.FileType.File:
            raise RayganError(f"output {out} exists and is a file, not a directory")
        self.existed = kind == pafs.FileType.Directory
        if self.existed and not overwrite and self._entries():
            raise RayganError(
                f"output directory {out} is not empty; pass --overwrite (overwrite=True) to replace it"
            )
        if self.local:
            parent, name = os.path.split(self.path)
            self.dir = _join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
        else:
            self.dir = self.path
            if self.existed:
                self.fs.delete_dir_contents(self.path)
        self.fs.create_dir(self.dir, recursive=True)

    def _entries(self) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))

    def file(self, name: str) -> str:
        return _join(self.dir, name)

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
    """Appends rows to `{split}-00000.parquet`, ... of `shard_rows` rows each."""

    def __init__(self, output: _Output, split: str, shard_rows: int):
        self.output, self.split, self.shard_rows = output, split, shard_rows
        self.shards: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                name = f"{self.split}-{len(self.shards):05d}.parquet"
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
        name = f"{self.split}-{len(self.shards):05d}.parquet"
        sha = _sha256(self.output.fs, self.output.file(name))
        self.shards.append({"file": name, "rows": self._rows, "sha256": sha})
        self._writer, self._rows = None, 0


def _rows_table(rows: list[list[int]]) -> pa.Table:
    tokens = pa.array(rows, type=pa.list_(pa.int32()))
    lengths = pc.list_value_length(tokens).cast(pa.int32())
    return pa.Table.from_arrays([tokens, lengths], schema=SHARD_SCHEMA)


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
        fs, path = _filesystem(given)
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            problem = "is a directory" if info.type == pafs.FileType.Directory else "does not exist"
            raise RayganError(f"input file {given} {problem}")
        sources.append(_Source(split, fs, path, info.size or 0))
    return sources


def _line_blocks(source: _Source, bar: tqdm) -> Iterator[list[bytes]]:
    """The file's lines as raw bytes, ~1 MiB at a time (.gz/.bz2/.zst decompressed by extension)."""
    tail = b""
    with source.fs.open_input_stream(source.path) as f:
        while block := f.read(READ_BLOCK_BYTES):
            bar.update(len(block))
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            yield lines
    if tail:
        yield [tail]


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
    rows = []
    for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids = enc.ids
        if not ids:  # only characters the tokenizer removes
            counts.dropped_empty += 1
        elif len(ids) >= max_len:
            counts.dropped_too_long += 1
        else:
            ids.append(EOS_ID)
            rows.append(ids)
    table = _rows_table(rows)
    values = table.column("tokens").combine_chunks().values.to_numpy()
    counts.kept += len(rows)
    counts.tokens += len(values)
    counts.unk_tokens += int(np.count_nonzero(values == UNK_ID))
    return table


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
) -> PrepareSummary:
    """Tokenize UTF-8 text files (one sentence per line) into Parquet shards under `out`.

    Two streaming passes (memory stays flat): train the tokenizer on the train split, then encode
    ~1 MiB blocks and append them to shards. Lines are stripped; empty lines, invalid UTF-8 and
    lines over `max_len - 1` tokens (`max_len` counts the EOS) are dropped and counted. Without
    `max_len`, a third, bounded pass picks the length that keeps LENGTH_COVERAGE of the first
    LENGTH_SAMPLE_LINES training lines (the summary's max_len_note says so). The test split is
    `test_inputs`, or else a `test_fraction` of the lines (DEFAULT_TEST_FRACTION when neither is
    given; 0 for none) drawn by a hash of (seed, line number). The tokenizer sees only train
    lines: test words unseen in train become UNK.
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    if test_fraction is None:
        test_fraction = 0.0 if test_inputs else DEFAULT_TEST_FRACTION
    _check_text_options(inputs, tokenizer, max_len, shard_rows, test_inputs, test_fraction)
    _check_vocab(vocab_size, min_frequency)
    sources = _sources(inputs, test_inputs)
    total = sum(s.size for s in sources)
    started = time.perf_counter()
    with _publish(out, overwrite) as output:
        train_sources = [s for s in sources if s.split != "test"]
        tok = _train(
            train_sources, tokenizer, vocab_size, min_frequency, test_fraction, seed, progress
        )
        note = ""
        if max_len is None:
            max_len, note = _covering_length(tok, train_sources, test_fraction, seed)
        summary = PrepareSummary(out, "text", tok.get_vocab_size(), max_len, max_len_note=note)
        summary.splits = {name: SplitCounts() for name in SPLITS}
        writers = {name: _ShardWriter(output, name, shard_rows) for name in SPLITS}
        with _progress(total, "encode", progress) as bar:
            for texts in _text_blocks(
                sources, summary.splits, bar, fraction=test_fraction, seed=seed
            ):
                for name, lines in texts.items():
                    writers[name].write(_encode(tok, lines, max_len, summary.splits[name]))
        splits = {name: writer.close() for name, writer in writers.items()}
        if splits["train"]["rows"] == 0:
            raise RayganError(
                f"no training line of {', '.join(inputs)} was kept: {summary.splits['train']}"
            )
        _write_bytes(output.fs, output.file(TOKENIZER_FILE), tok.to_str().encode())
        source = {"inputs": inputs, "test_inputs": test_inputs, "test_fraction": test_fraction}
        source.update(seed=seed, min_frequency=min_frequency, requested_vocab_size=vocab_size)
        source.update(max_len_note=note or None)
        manifest = _manifest(summary, splits, tokenizer=tokenizer, source=source)
        _write_bytes(output.fs, output.file(MANIFEST), json.dumps(manifest, indent=2).encode())
    summary.seconds = time.perf_counter() - started
    return summary


def _train(sources, kind, vocab_size, min_frequency, fraction, seed, progress):
    counts = {name: SplitCounts() for name in SPLITS}
    with _progress(sum(s.size for s in sources), "train tokenizer", progress) as bar:
        blocks = _text_blocks(sources, counts, bar, fraction=fraction, seed=seed)
        train_lines = (texts["train"] for texts in blocks if texts.get("train"))
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
            _write_bytes(output.fs, output.file(ORACLE_FILE), npz)
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
        _write_bytes(output.fs, output.file(MANIFEST), json.dumps(manifest, indent=2).encode())
    summary.seconds = time.perf_counter() - started
    return summary


def _derive_seed(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _build_oracle(kind, path, vocab_size, max_len, seed):
    """(oracle, its manifest description, npz bytes to copy or None)."""
    from raygan.models import Oracle

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
    fs, inner = _filesystem(path)
    if _file_type(fs, inner) != pafs.FileType.File:
        raise RayganError(f"oracle_path {path} does not exist")
    npz = _read_bytes(fs, inner)
    model = _oracle_from_npz(npz, path)
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


def _oracle_from_npz(npz: bytes, name: str):
    from raygan.models import Oracle

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "oracle.npz")
        with open(local, "wb") as f:
            f.write(npz)
        try:
            return Oracle.from_seqgan_file(local)
        except ValueError as exc:
            raise RayganError(f"oracle file {name}: {str(exc).replace(local, '')}") from None


# -- reading back --------------------------------------------------------------------------------
def load_manifest(data_dir: str) -> dict:
    """The manifest of a prepared directory; RayganError if it is missing, unreadable or foreign."""
    fs, root = _filesystem(data_dir)
    path = _join(root, MANIFEST)
    if _file_type(fs, path) != pafs.FileType.File:
        raise RayganError(
            f"{path} not found: {data_dir} is not a prepared corpus (run `raygan prepare`), "
            "or its prepare did not finish"
        )
    try:
        manifest = json.loads(_read_bytes(fs, path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RayganError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise RayganError(f"{path}: format_version {found}, this raygan reads {FORMAT_VERSION}")
    for key in ("kind", "vocab_size", "max_len", "start_id", "eos_id", "pad_id", "splits"):
        if key not in manifest:
            raise RayganError(f"{path} has no {key!r} field")
    return manifest


def model_config_kwargs(manifest: dict) -> dict:
    """The ModelConfig fields a corpus fixes: vocab_size, max_len, start_id, eos_id, pad_id."""
    keys = ("vocab_size", "max_len", "start_id", "eos_id", "pad_id")
    return {key: manifest[key] for key in keys}


def verify(data_dir: str) -> dict:
    """Check a prepared directory end to end and return its manifest.

    Every shard must exist, match its sha256 (streamed), be readable Parquet with the shard schema,
    hold the manifest's row count, and lengths/ids must be consistent; the train split must not be
    empty; the tokenizer (or oracle copy) must be present. Any failure names the file.
    """
    manifest = load_manifest(data_dir)
    fs, root = _filesystem(data_dir)
    for split in SPLITS:
        for shard in _split_entry(manifest, split, root)["shards"]:
            path = _join(root, shard["file"])
            _require_file(fs, path)
            found = _sha256(fs, path)
            if found != shard["sha256"]:
                raise RayganError(
                    f"{path}: sha256 {found} does not match manifest.json (expected "
                    f"{shard['sha256']}); the shard changed after prepare"
                )
        _Rows.load(fs, root, manifest, split)
    _require_train_rows(manifest, root)
    if manifest["kind"] == "text":
        load_codec(data_dir)
    elif (manifest.get("oracle") or {}).get("file"):
        load_oracle(data_dir)
    return manifest


def _split_entry(manifest: dict, split: str, root: str) -> dict:
    entry = manifest["splits"].get(split)
    if entry is None:
        raise RayganError(f"{_join(root, MANIFEST)} has no {split!r} split")
    return entry


def _require_file(fs: pafs.FileSystem, path: str) -> None:
    if _file_type(fs, path) != pafs.FileType.File:
        raise RayganError(f"{path}: shard listed in manifest.json is missing")


def _require_train_rows(manifest: dict, root: str) -> None:
    if _split_entry(manifest, "train", root)["rows"] == 0:
        raise RayganError(f"{_join(root, MANIFEST)}: the train split has no rows (empty corpus)")


@dataclass(frozen=True)
class _Rows:
    """A split's rows back to back: row i is values[offsets[i]:offsets[i+1]] (EOS included)."""

    values: np.ndarray  # int32 (total tokens,)
    offsets: np.ndarray  # int64 (N + 1,)
    lengths: np.ndarray  # int32 (N,)

    @classmethod
    def load(cls, fs: pafs.FileSystem, root: str, manifest: dict, split: str) -> _Rows:
        values, lengths = [np.zeros(0, np.int32)], [np.zeros(0, np.int32)]
        for shard in _split_entry(manifest, split, root)["shards"]:
            v, n = _read_shard(fs, _join(root, shard["file"]), shard["rows"], manifest)
            values.append(v)
            lengths.append(n)
        lengths_N = np.concatenate(lengths)
        offsets = np.zeros(len(lengths_N) + 1, dtype=np.int64)
        np.cumsum(lengths_N, out=offsets[1:])
        return cls(np.concatenate(values), offsets, lengths_N)

    def __len__(self) -> int:
        return len(self.lengths)

    def gather(
        self, rows_B: np.ndarray, max_len: int, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `rows_B` padded to (B, T) int64, and their lengths (B,) int64."""
        lengths_B = self.lengths[rows_B].astype(np.int64)
        positions_T = np.arange(max_len)
        real_BT = positions_T[None, :] < lengths_B[:, None]
        index_BT = np.where(real_BT, self.offsets[rows_B][:, None] + positions_T, 0)
        source = self.values if len(self.values) else np.zeros(1, np.int32)
        tokens_BT = np.where(real_BT, source[index_BT], pad_id).astype(np.int64)
        return torch.from_numpy(tokens_BT), torch.from_numpy(lengths_B)


def _read_shard(fs, path: str, rows: int, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """(flat token ids int32, lengths int32) of one shard, checked against the manifest."""
    _require_file(fs, path)
    try:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            _check_schema(parquet.schema_arrow, path)
            table = parquet.read(columns=["tokens", "length"])
    except (pa.ArrowException, OSError) as exc:
        raise RayganError(f"{path} is not a readable Parquet shard ({exc})") from None
    if table.num_rows != rows:
        raise RayganError(f"{path} has {table.num_rows} rows; manifest.json says {rows}")
    return _check_rows(table, path, manifest)


def _check_schema(schema: pa.Schema, path: str) -> None:
    """tokens: list<int32> and length: int32 (other columns are ignored)."""
    names = schema.names
    tokens = schema.field("tokens").type if "tokens" in names else None
    length = schema.field("length").type if "length" in names else None
    if not (tokens and pa.types.is_list(tokens) and tokens.value_type == pa.int32()) or (
        length != pa.int32()
    ):
        found = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise RayganError(
            f"{path}: schema is ({found}), expected (tokens: list<int32>, length: int32)"
        )


def _check_rows(table: pa.Table, path: str, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    tokens = table.column("tokens").combine_chunks()
    lengths = table.column("length").combine_chunks()
    if tokens.null_count or lengths.null_count:
        raise RayganError(f"{path} has null rows")
    if len(tokens) and not pc.all(pc.equal(pc.list_value_length(tokens), lengths)).as_py():
        raise RayganError(f"{path}: the length column disagrees with the token lists")
    values, lengths_N = tokens.flatten().to_numpy(), lengths.to_numpy()
    if len(lengths_N) and not 1 <= lengths_N.min() <= lengths_N.max() <= manifest["max_len"]:
        raise RayganError(f"{path}: lengths outside [1, max_len={manifest['max_len']}]")
    if len(values) and not 0 <= values.min() <= values.max() < manifest["vocab_size"]:
        raise RayganError(f"{path}: token ids outside [0, vocab_size={manifest['vocab_size']})")
    return values, lengths_N


def _pad_id(manifest: dict) -> int:
    return 0 if manifest["pad_id"] is None else manifest["pad_id"]  # oracle rows are never padded


def read_split(data_dir: str, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """All rows of `split`, in file order: tokens (N, T) int64 padded with pad_id, lengths (N,)."""
    manifest = load_manifest(data_dir)
    fs, root = _filesystem(data_dir)
    rows = _Rows.load(fs, root, manifest, split)
    return rows.gather(np.arange(len(rows)), manifest["max_len"], _pad_id(manifest))


def load_codec(data_dir: str) -> Codec:
    """The Codec of a prepared corpus (text: its tokenizer.json; oracle: space-separated ids)."""
    from tokenizers import Tokenizer

    manifest = load_manifest(data_dir)
    ids = {k: manifest[k] for k in ("eos_id", "pad_id")}
    bos_id = manifest["start_id"] if manifest["kind"] == "text" else None
    if manifest["kind"] != "text":
        return Codec(None, vocab_size=manifest["vocab_size"], bos_id=bos_id, **ids)
    fs, root = _filesystem(data_dir)
    path = _join(root, manifest["tokenizer_file"])
    if _file_type(fs, path) != pafs.FileType.File:
        raise RayganError(f"{path}: tokenizer listed in manifest.json is missing")
    try:
        tokenizer = Tokenizer.from_str(_read_bytes(fs, path).decode())
    except Exception as exc:  # tokenizers raises plain Exception for bad JSON
        raise RayganError(f"{path} is not a readable tokenizer ({exc})") from None
    return Codec(tokenizer, vocab_size=manifest["vocab_size"], bos_id=bos_id, **ids)


def load_oracle(data_dir: str):
    """Rebuild the oracle of an oracle corpus (for NLL_oracle); the SeqGAN copy is sha256-checked."""
    from raygan.models import Oracle

    manifest = load_manifest(data_dir)
    oracle = manifest.get("oracle")
    fs, root = _filesystem(data_dir)
    if not oracle:
        raise RayganError(f"{_join(root, MANIFEST)}: {manifest['kind']} corpus has no oracle")
    if oracle["kind"] == "random":
        return Oracle.random(
            vocab_size=oracle["vocab_size"],
            max_len=oracle["max_len"],
            embed_dim=oracle["embed_dim"],
            hidden_dim=oracle["hidden_dim"],
            seed=oracle["seed"],
        )
    path = _join(root, oracle["file"])
    if _file_type(fs, path) != pafs.FileType.File:
        raise RayganError(f"{path}: oracle copy listed in manifest.json is missing")
    npz = _read_bytes(fs, path)
    found = hashlib.sha256(npz).hexdigest()
    if found != oracle["sha256"]:
        raise RayganError(
            f"{path}: sha256 {found} does not match manifest.json ({oracle['sha256']})"
        )
    return _oracle_from_npz(npz, path)


class RankBatches:
    """One DDP rank's training batches: disjoint, equal-length slices of a per-epoch shuffle.

    Epoch e shuffles the N rows with a permutation seeded by (seed, e). Global step s takes rows
    perm[s*W*b : (s+1)*W*b] and rank r the r-th block of b of them, so at every step the W ranks'
    batches together are exactly the batch of a single process with batch W*b: DDP with W workers
    is comparable with one process. Every rank runs `steps_per_epoch = N // (W*b)` steps (DDP hangs
    on unequal counts); the last N mod W*b rows of each permutation are skipped (different rows
    each epoch). Iterating yields epoch `epoch` from `start_step` (exact resume); `iter_epoch`
    serves any other epoch without reading the shards again.

    Memory: the split's tokens stay in RAM as int32, 4 bytes per token plus 12 per row (offsets,
    lengths): COCO (10k rows) ~0.6 MB; 10M rows of 20 tokens ~0.9 GB per worker. Only the tokens and
    length columns are read. Corpora larger than RAM would need shard-level shuffling (not built).
    """

    def __init__(
        self,
        data_dir: str,
        *,
        batch_size_per_rank: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        start_step: int = 0,
        split: str = "train",
    ):
        if not 0 <= rank < world_size:
            raise RayganError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size_per_rank < 1 or seed < 0:
            raise RayganError(
                f"need batch_size_per_rank >= 1 and seed >= 0, got {batch_size_per_rank}, {seed}"
            )
        manifest = load_manifest(data_dir)
        fs, root = _filesystem(data_dir)
        self.rows = _Rows.load(fs, root, manifest, split)
        self.max_len, self.pad_id = manifest["max_len"], _pad_id(manifest)
        self.rank, self.world_size, self.batch, self.seed = (
            rank,
            world_size,
            batch_size_per_rank,
            seed,
        )
        self.steps_per_epoch = len(self.rows) // (world_size * batch_size_per_rank)
        if self.steps_per_epoch == 0:
            raise RayganError(
                f"{split} split of {data_dir} has {len(self.rows)} rows, fewer than one global batch "
                f"(world_size {world_size} x batch_size_per_rank {batch_size_per_rank})"
            )
        self._check_position(epoch, start_step)
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_epoch(self.epoch, self.start_step)

    def iter_epoch(
        self, epoch: int, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens (B, T) int64, lengths (B,) int64) for steps start_step .. steps_per_epoch - 1."""
        self._check_position(epoch, start_step)
        perm_N = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        global_batch = self.world_size * self.batch
        for step in range(start_step, self.steps_per_epoch):
            first = step * global_batch + self.rank * self.batch
            yield self.rows.gather(perm_N[first : first + self.batch], self.max_len, self.pad_id)

    def _check_position(self, epoch: int, start_step: int) -> None:
        if epoch < 0 or not 0 <= start_step <= self.steps_per_epoch:
            raise RayganError(
                f"need epoch >= 0 and start_step in [0, {self.steps_per_epoch}], "
                f"got {epoch}, {start_step}"
            )


# -- CLI -----------------------------------------------------------------------------------------
_TEXT_ONLY = ("tokenizer", "test_input", "test_fraction", "min_frequency")
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
        options = {
            k: given[k] for k in ("tokenizer", "test_fraction", "min_frequency") if k in given
        }
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
