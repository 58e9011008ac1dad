"""Reading a prepared directory back (raygan.data.layout), with no Ray: `verify` checks everything
(sha256 included), `read_split` returns a whole split padded (evaluation), `RankBatches` yields one
DDP rank's training batches from the split held in RAM, `StreamBatches` the same from a bounded
shuffle buffer over the split's Parquet row groups.

Shape legend: N=rows B=batch T=max_len.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from raygan.core.errors import RayganError
from raygan.data import storage
from raygan.data.layout import FORMAT_VERSION, MANIFEST, SPLITS
from raygan.data.tokenizer import Codec


def load_manifest(data_dir: str) -> dict:
    """The manifest of a prepared directory; RayganError if it is missing, unreadable or foreign."""
    fs, root = storage.filesystem(data_dir)
    path = storage.join(root, MANIFEST)
    if storage.fs_type(fs, path) != pafs.FileType.File:
        raise RayganError(
            f"{path} not found: {data_dir} is not a prepared corpus (run `raygan prepare`), "
            "or its prepare did not finish"
        )
    try:
        manifest = json.loads(storage.fs_read(fs, path))
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
    fs, root = storage.filesystem(data_dir)
    for split in SPLITS:
        for shard in _split_entry(manifest, split, root)["shards"]:
            path = storage.join(root, shard["file"])
            _require_file(fs, path)
            found = storage.fs_sha256(fs, path)
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
        raise RayganError(f"{storage.join(root, MANIFEST)} has no {split!r} split")
    return entry


def _require_file(fs: pafs.FileSystem, path: str) -> None:
    if storage.fs_type(fs, path) != pafs.FileType.File:
        raise RayganError(f"{path}: shard listed in manifest.json is missing")


def _require_train_rows(manifest: dict, root: str) -> None:
    if _split_entry(manifest, "train", root)["rows"] == 0:
        raise RayganError(f"{storage.join(root, MANIFEST)}: the train split has no rows (empty corpus)")


@dataclass(frozen=True)
class _Rows:
    """A split's rows back to back: row i is values[offsets[i]:offsets[i+1]] (EOS included)."""

    values: np.ndarray  # int32 (total tokens,)
    offsets: np.ndarray  # int64 (N + 1,)
    lengths: np.ndarray  # int32 (N,)

    @classmethod
    def load(cls, fs: pafs.FileSystem, root: str, manifest: dict, split: str) -> _Rows:
        shards = _split_entry(manifest, split, root)["shards"]
        return cls.concat([
            cls.from_arrays(*_read_shard(fs, storage.join(root, s["file"]), s["rows"], manifest))
            for s in shards
        ])  # fmt: skip

    @classmethod
    def from_arrays(cls, values: np.ndarray, lengths_N: np.ndarray) -> _Rows:
        offsets = np.zeros(len(lengths_N) + 1, dtype=np.int64)
        np.cumsum(lengths_N, out=offsets[1:])
        return cls(values, offsets, lengths_N)

    @classmethod
    def concat(cls, parts: list[_Rows]) -> _Rows:
        values = [np.zeros(0, np.int32), *(p.values for p in parts)]
        lengths = [np.zeros(0, np.int32), *(p.lengths for p in parts)]
        return cls.from_arrays(np.concatenate(values), np.concatenate(lengths))

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
    with _shard(fs, path) as parquet:
        table = parquet.read(columns=["tokens", "length"])
    if table.num_rows != rows:
        raise RayganError(f"{path} has {table.num_rows} rows; manifest.json says {rows}")
    return _check_rows(table, path, manifest)


@contextlib.contextmanager
def _shard(fs, path: str) -> Iterator[pq.ParquetFile]:
    """A shard open for reading with its schema checked; one that cannot be read (truncated,
    not Parquet) is a RayganError naming it."""
    try:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            _check_schema(parquet.schema_arrow, path)
            yield parquet
    except (pa.ArrowException, OSError) as exc:
        raise RayganError(f"{path} is not a readable Parquet shard ({exc})") from None


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
    fs, root = storage.filesystem(data_dir)
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
    fs, root = storage.filesystem(data_dir)
    path = storage.join(root, manifest["tokenizer_file"])
    if storage.fs_type(fs, path) != pafs.FileType.File:
        raise RayganError(f"{path}: tokenizer listed in manifest.json is missing")
    try:
        tokenizer = Tokenizer.from_str(storage.fs_read(fs, path).decode())
    except Exception as exc:  # tokenizers raises plain Exception for bad JSON
        raise RayganError(f"{path} is not a readable tokenizer ({exc})") from None
    return Codec(tokenizer, vocab_size=manifest["vocab_size"], bos_id=bos_id, **ids)


def load_oracle(data_dir: str):
    """Rebuild the oracle of an oracle corpus (for NLL_oracle); the SeqGAN copy is sha256-checked."""
    from raygan.core.models import Oracle

    manifest = load_manifest(data_dir)
    oracle = manifest.get("oracle")
    fs, root = storage.filesystem(data_dir)
    if not oracle:
        raise RayganError(f"{storage.join(root, MANIFEST)}: {manifest['kind']} corpus has no oracle")
    if oracle["kind"] == "random":
        return Oracle.random(
            vocab_size=oracle["vocab_size"],
            max_len=oracle["max_len"],
            embed_dim=oracle["embed_dim"],
            hidden_dim=oracle["hidden_dim"],
            seed=oracle["seed"],
        )
    path = storage.join(root, oracle["file"])
    if storage.fs_type(fs, path) != pafs.FileType.File:
        raise RayganError(f"{path}: oracle copy listed in manifest.json is missing")
    npz = storage.fs_read(fs, path)
    found = hashlib.sha256(npz).hexdigest()
    if found != oracle["sha256"]:
        raise RayganError(
            f"{path}: sha256 {found} does not match manifest.json ({oracle['sha256']})"
        )
    return oracle_from_npz(npz, path)


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
    length columns are read. StreamBatches keeps memory bounded instead.
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
        self.max_len, self.pad_id = manifest["max_len"], _pad_id(manifest)
        self.rank, self.world_size, self.batch, self.seed = (
            rank,
            world_size,
            batch_size_per_rank,
            seed,
        )
        self.num_rows = self._load(data_dir, manifest, split)
        self.steps_per_epoch = self.num_rows // (world_size * batch_size_per_rank)
        if self.steps_per_epoch == 0:
            raise RayganError(
                f"{split} split of {data_dir} has {self.num_rows} rows, fewer than one global batch "
                f"(world_size {world_size} x batch_size_per_rank {batch_size_per_rank})"
            )
        self._check_position(epoch, start_step)
        self.epoch, self.start_step = epoch, start_step

    def _load(self, data_dir: str, manifest: dict, split: str) -> int:
        fs, root = storage.filesystem(data_dir)
        self.rows = _Rows.load(fs, root, manifest, split)
        return len(self.rows)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_epoch(self.epoch, self.start_step)

    def iter_epoch(
        self, epoch: int, start_step: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(tokens (B, T) int64, lengths (B,) int64) for steps start_step .. steps_per_epoch - 1."""
        self._check_position(epoch, start_step)
        rows_at = self._epoch_order(epoch)
        global_batch = self.world_size * self.batch
        for step in range(start_step, self.steps_per_epoch):
            yield rows_at(step * global_batch + self.rank * self.batch, self.batch)

    def _epoch_order(self, epoch: int):
        """A function (first, count) -> the batch of the epoch order's rows first..first+count-1."""
        perm_N = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        return lambda first, count: self.rows.gather(
            perm_N[first : first + count], self.max_len, self.pad_id
        )

    def _check_position(self, epoch: int, start_step: int) -> None:
        if epoch < 0 or not 0 <= start_step <= self.steps_per_epoch:
            raise RayganError(
                f"need epoch >= 0 and start_step in [0, {self.steps_per_epoch}], "
                f"got {epoch}, {start_step}"
            )


DEFAULT_BUFFER_ROWS = 1_000_000


class StreamBatches(RankBatches):
    """RankBatches with memory bounded by a shuffle buffer instead of the split's size.

    The epoch order: the split's Parquet row groups in a permutation seeded by (seed, e), grouped
    in that order into windows of at least `buffer_rows` rows (whole row groups), each window's
    rows permuted by (seed, e, window). Global step s takes positions s*W*b .. (s+1)*W*b - 1 of
    that order and rank r its r-th block of b, as in RankBatches, so the W ranks' batches are
    still one process's batch of W*b, every rank runs N // (W*b) steps, and a resumed epoch
    starts at its step's window without reading the ones before. A rank holds at most the two
    windows its batch straddles (buffer_rows >= W*b is required).

    Every rank reads every window (its rows are spread over the window's row groups): per epoch
    each worker reads the split once, at Parquet speed (BENCHMARKS.md, prepare section), which
    is far above what a training step consumes; in exchange the order does not depend on W.
    """

    def __init__(self, data_dir: str, *, buffer_rows: int = DEFAULT_BUFFER_ROWS, **kwargs):
        if buffer_rows < 1:
            raise RayganError(f"buffer_rows must be >= 1, got {buffer_rows}")
        self.buffer_rows = buffer_rows
        super().__init__(data_dir, **kwargs)
        if buffer_rows < self.world_size * self.batch:
            raise RayganError(
                f"buffer_rows {buffer_rows} is smaller than one global batch "
                f"({self.world_size} x {self.batch}): a batch could span three windows"
            )

    def _load(self, data_dir: str, manifest: dict, split: str) -> int:
        self.fs, root = storage.filesystem(data_dir)
        self.manifest = manifest
        self.units = _row_groups(self.fs, root, manifest, split)  # (path, group, rows)
        return sum(rows for _, _, rows in self.units)

    def _epoch_order(self, epoch: int):
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        windows: list[list[int]] = [[]]
        sizes = [0]
        for unit in order:
            if sizes[-1] >= self.buffer_rows:
                windows.append([])
                sizes.append(0)
            windows[-1].append(int(unit))
            sizes[-1] += self.units[unit][2]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        loaded: dict[int, tuple[_Rows, np.ndarray]] = {}

        def window(w: int) -> tuple[_Rows, np.ndarray]:
            if w not in loaded:
                for old in [k for k in loaded if k < w]:
                    del loaded[old]  # positions only move forward
                rows = _Rows.concat([self._read_unit(u) for u in windows[w]])
                perm = np.random.default_rng([self.seed, epoch, w]).permutation(len(rows))
                loaded[w] = rows, perm
            return loaded[w]

        def rows_at(first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
            parts, position = [], first
            while position < first + count:
                w = int(np.searchsorted(starts, position, side="right")) - 1
                rows, perm = window(w)
                end = min(first + count, int(starts[w + 1]))
                picked = perm[position - starts[w] : end - starts[w]]
                parts.append(rows.gather(picked, self.max_len, self.pad_id))
                position = end
            if len(parts) == 1:
                return parts[0]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

        return rows_at

    def _read_unit(self, unit: int) -> _Rows:
        path, group, rows = self.units[unit]
        with _shard(self.fs, path) as parquet:
            table = parquet.read_row_group(group, columns=["tokens", "length"])
        if table.num_rows != rows:
            raise RayganError(f"{path} row group {group} has {table.num_rows} rows, not {rows}")
        return _Rows.from_arrays(*_check_rows(table, path, self.manifest))


def _row_groups(fs, root: str, manifest: dict, split: str) -> list[tuple[str, int, int]]:
    """(shard path, row group, rows) of every row group of `split`, from the Parquet footers."""
    units = []
    for shard in _split_entry(manifest, split, root)["shards"]:
        path = storage.join(root, shard["file"])
        _require_file(fs, path)
        with _shard(fs, path) as parquet:
            meta = parquet.metadata
        if meta.num_rows != shard["rows"]:
            found = f"{path} has {meta.num_rows} rows"
            raise RayganError(f"{found}; manifest.json says {shard['rows']}")
        units += [(path, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return [unit for unit in units if unit[2]]


def oracle_from_npz(npz: bytes, name: str):
    from raygan.core.models import Oracle

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "oracle.npz")
        with open(local, "wb") as f:
            f.write(npz)
        try:
            return Oracle.from_seqgan_file(local)
        except ValueError as exc:
            raise RayganError(f"oracle file {name}: {str(exc).replace(local, '')}") from None
