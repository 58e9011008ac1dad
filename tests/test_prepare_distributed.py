"""`raygan prepare --workers N` (raygan.data.distributed) against the one-process prepare_text:
the same rows, lengths, order, ids, tokenizer and counts, on the session's 2-node Ray cluster."""

from __future__ import annotations

import gzip
import itertools
import random
from pathlib import Path

import numpy as np
import pytest

from raygan.core.errors import RayganError
from raygan.data.distributed import cut_pieces
from raygan.data.prepare import _sources, prepare_text
from raygan.data.read import load_manifest, read_split, verify

WORDS = ["the", "dog", "it's", "don't", "(maybe)", "a", "cat", "café", "x,y", "3,000", "ran",
         "Zebra", "“quoted”", "我", "hello.", "end", "b", "c", "d", "e"]  # fmt: skip


def write_corpus(root: Path) -> list[str]:
    """Two inputs: a plain file of ~600 seeded lines with the awkward ones prepare counts
    (empty, blank, invalid UTF-8, over-long, CRLF, no final newline), and a gzipped one."""
    rng = random.Random(0)
    lines = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))).encode() for _ in range(600)
    ]
    lines[10:10] = [b"", b"   \t ", b"\xff\xfe bad", b"word " * 40, b"crlf line\r"]
    plain = root / "a.txt"
    plain.write_bytes(b"\n".join(lines) + b"\nlast line without newline")
    packed = root / "b.txt.gz"
    packed.write_bytes(gzip.compress(b"\n".join(lines[:50]) + b"\n"))
    return [str(plain), str(packed)]


def rows_of(out: str) -> dict:
    return {s: tuple(t.numpy() for t in read_split(out, s)) for s in ("train", "test")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize(
    "options",
    [
        {"tokenizer": "word", "test_fraction": 0.2},  # max_len chosen from the data
        {"tokenizer": "word", "test_fraction": 0.1, "max_len": 9, "vocab_size": 12},
        {"tokenizer": "char", "test_fraction": 0.0, "max_len": 60, "min_frequency": 3},
        {"tokenizer": "bpe", "test_fraction": 0.1, "max_len": 16, "vocab_size": 60},
    ],
    ids=["word", "word-small-vocab", "char-min-frequency", "bpe"],
)
def test_ray_data_prepare_equals_one_process(ray_cluster, inputs, tmp_path, options):
    one = str(tmp_path / "one")
    single = prepare_text(inputs, one, shard_rows=100, progress=False, **options)
    expected = rows_of(one)
    manifests = {}
    for workers in (1, 2):
        out = str(tmp_path / f"ray{workers}")
        summary = prepare_text(
            inputs, out, shard_rows=100, progress=False, workers=workers, piece_mb=0.002, **options
        )
        manifests[workers] = verify(out)
        got = rows_of(out)
        for split in ("train", "test"):
            assert np.array_equal(got[split][0], expected[split][0]), (workers, split)
            assert np.array_equal(got[split][1], expected[split][1]), (workers, split)
        assert summary.splits == single.splits and summary.max_len == single.max_len
        assert manifests[workers]["summary"] == load_manifest(one)["summary"]
        assert Path(out, "tokenizer.json").read_text() == Path(one, "tokenizer.json").read_text()
        assert not Path(out, "_pieces").exists()
    # the pieces do not depend on N: byte-identical shards
    assert manifests[1]["splits"] == manifests[2]["splits"]
    assert len(manifests[2]["splits"]["train"]["shards"]) > 2  # several pieces did write
    assert sum(c.dropped_invalid_utf8 for c in single.splits.values()) == 2  # one per input
    assert single.splits["train"].kept > 200


def test_pieces_start_at_line_starts_and_cover_the_file(tmp_path):
    data = b"short\n" + b"x" * 300 + b"\n\n" + b"a line\n" * 40 + b"tail"
    path = tmp_path / "c.txt"
    path.write_bytes(data)
    pieces = cut_pieces(_sources([str(path)], None), 64)
    assert pieces[0].start == 0 and pieces[-1].end == len(data)
    for before, after in itertools.pairwise(pieces):
        assert before.end == after.start and data[after.start - 1 : after.start] == b"\n"
    assert pieces[1].start == len(b"short\n" + b"x" * 300 + b"\n")  # a line longer than a piece
    assert [p.index for p in pieces] == list(range(len(pieces)))
    gz = tmp_path / "c.txt.gz"
    gz.write_bytes(gzip.compress(data))
    (whole,) = cut_pieces(_sources([str(gz)], None), 64)
    assert (whole.start, whole.end) == (0, None)


def test_bad_inputs_fail_as_in_one_process_and_write_nothing(ray_cluster, tmp_path):
    nothing = tmp_path / "nothing.txt"
    nothing.write_bytes(b"\n  \n\xff\xfe\n" * 50)
    for workers in (None, 2):
        with pytest.raises(RayganError, match=r"no training line of .* was kept"):
            prepare_text([str(nothing)], str(tmp_path / "out"), test_fraction=0, progress=False,
                         workers=workers, piece_mb=0.00005)  # fmt: skip
        assert sorted(p.name for p in tmp_path.iterdir()) == ["nothing.txt"]
    with pytest.raises(RayganError, match=r"missing\.txt does not exist"):
        prepare_text([str(tmp_path / "missing.txt")], str(tmp_path / "out"), workers=2)
    with pytest.raises(RayganError, match="workers >= 1"):
        prepare_text([str(nothing)], str(tmp_path / "out"), workers=0)


@pytest.mark.parametrize("workers", [None, 2], ids=["one-process", "ray"])
def test_an_unreadable_input_is_a_one_line_error_naming_it(ray_cluster, tmp_path, workers):
    """A truncated .gz fails inside a Ray Data task as it does in one process: a RayganError
    naming the file (raised in the task, raised again by the driver), and nothing left behind."""
    corrupt = tmp_path / "bad.txt.gz"
    corrupt.write_bytes(gzip.compress(b"line\n" * 1000)[:-30])
    with pytest.raises(RayganError, match=r"input file .*bad\.txt\.gz cannot be read: .*runcated"):
        prepare_text([str(corrupt)], str(tmp_path / "out"), progress=False, workers=workers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt.gz"]


def test_file_uris_in_and_out(ray_cluster, inputs, tmp_path):
    """Tasks open the inputs and write the shards by URI, as they would on object storage."""
    uris = [Path(p).as_uri() for p in inputs]
    out = (tmp_path / "out").as_uri()
    prepare_text(uris, out, test_fraction=0.2, max_len=12, progress=False, workers=2,
                 piece_mb=0.005)  # fmt: skip
    prepare_text(inputs, str(tmp_path / "one"), test_fraction=0.2, max_len=12, progress=False)
    for split in ("train", "test"):
        assert np.array_equal(rows_of(out)[split][0], rows_of(str(tmp_path / "one"))[split][0])
    assert verify(out)["splits"]["train"]["rows"] > 0
