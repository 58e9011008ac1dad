"""raygan.data and raygan.data.tokenizer: prepare -> shards -> read back, on tiny corpora (no Ray)."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raygan.core.config import ModelConfig
from raygan.core.errors import RayganError
from raygan.core.models import Oracle
from raygan.data import prepare as data
from raygan.data.cli import add_prepare_arguments, run_prepare
from raygan.data.prepare import prepare_oracle, prepare_text
from raygan.data.read import (
    RankBatches,
    StreamBatches,
    load_codec,
    load_manifest,
    load_oracle,
    model_config_kwargs,
    read_split,
    verify,
)
from raygan.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, build_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data"
COCO_TRAIN = SHARED / "image_coco/train/image_coco.txt"
SEQGAN_NPZ = SHARED / "seqgan_oracle/target_params.npz"

SENTENCES = [
    "A man riding a bike down the street.",
    "Two dogs play in the park.",
    "The cat's toy is under the couch, isn't it?",
    "A plate of food (pasta and salad).",
    "People wait for the bus.",
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def word_pieces(tokenizer, line: str) -> list[str]:
    normalized = tokenizer.normalizer.normalize_str(line)
    return [piece for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(normalized)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """103 distinct lines, 2 held out by file; small shards so a split spans several files."""
    root = tmp_path_factory.mktemp("corpus")
    train = write_lines(root / "train.txt", [f"sentence number {i} is here ." for i in range(103)])
    test = write_lines(root / "test.txt", ["sentence number 5 is here .", "an unseen line ."])
    prepare_text(
        [str(train)], str(root / "out"), test_inputs=[str(test)], shard_rows=40, max_len=32,
        progress=False,
    )
    return root / "out"


# -- tokenizer --------------------------------------------------------------------------------------
@pytest.mark.skipif(not COCO_TRAIN.is_file(), reason=f"COCO train file absent: {COCO_TRAIN}")
def test_word_tokenizer_agrees_with_nltk_on_coco():
    nltk = pytest.importorskip("nltk")
    lines = COCO_TRAIN.read_text(encoding="utf-8").splitlines()[:2000]
    tok = build_tokenizer("word")
    same = [
        word_pieces(tok, line) == nltk.word_tokenize(line.lower(), preserve_line=True)
        for line in lines
    ]
    rate = sum(same) / len(same)
    print(f"nltk agreement on the first 2000 COCO train lines: {rate:.4%}")
    assert rate >= 0.99


@pytest.mark.parametrize(
    "line",
    [
        "A bicycle replica with a clock as the front wheel.",
        "Don't do it, he said: \"it's 3,000 dollars (roughly).\"",
        "I can't believe 'tis true... wow!!",
        "The U.S. is big; Mr. Smith went to Washington.",
        "He said 'hello' to me -- twice.",
        "cannot gonna wanna gimme lemme more'n d'ye",
        "«quoted» “curly” ‘single’ text.",
        "x' y' dogs' bones, a-'b",
        '``hi\'\' she said "hello" and "bye"',
        "we'll we're we've i'm he'd it's, it's) it's.",
        "a,b 1,000 a:b 10:30 end with colon:",
        "price: $3.88 (approx) #1 & @2 50% ok... what?!",
        "(parens) [brackets] {braces} <angle> — em – en",
        "tab\there  rock'n'roll o'neil",
    ],
)
def test_word_tokenizer_matches_nltk_rules(line):
    nltk = pytest.importorskip("nltk")
    expected = nltk.word_tokenize(line.lower(), preserve_line=True)
    assert word_pieces(build_tokenizer("word"), line) == expected


# fmt: off
SOUP = [
    "the", "dog", "it's", "don't", "cannot", "we'll", "u.s.", "3,000", "10:30", "o'neil", "dogs'",
    "'hello", "(x)", '"hi"', "wanna", "gonna", "a-b", "...", "--", "!", "?", ",", ":", ";", "$5",
    "50%", "'", "''", "``", "end.", "mr.", "'tis", "i'm", "she'd", "“q”", "‘s’", "rock'n'roll",
    "x,y", "a:b", "a,", "b:", "(", ")", "[a]", "{b}", "<c>", "&", "@", "#1", "*", "—", "–", '"',
    "gimme", "lemme", "more'n", "d'ye", "gotta", "can't", "won't", "isn't",
]
# fmt: on


def test_word_tokenizer_agrees_with_nltk_on_punctuation_soup():
    """Random lines of pieces that trigger nltk's rules, glued or spaced at random."""
    nltk = pytest.importorskip("nltk")
    rng, tok = random.Random(0), build_tokenizer("word")
    lines = [
        "".join(rng.choice(SOUP) + rng.choice(["", " ", " "]) for _ in range(rng.randint(1, 8)))
        for _ in range(1500)
    ]
    same = [word_pieces(tok, s) == nltk.word_tokenize(s.lower(), preserve_line=True) for s in lines]
    print(f"nltk agreement on 1500 punctuation-soup lines: {sum(same) / len(same):.2%}")
    assert sum(same) / len(same) >= 0.99


def test_word_tokenizer_examples_and_cjk():
    tok = build_tokenizer("word")
    assert word_pieces(tok, "The front wheel.") == ["the", "front", "wheel", "."]
    assert word_pieces(tok, "Don't, it's") == ["do", "n't", ",", "it", "'s"]
    assert word_pieces(tok, "我喜欢猫。OK") == ["我", "喜", "欢", "猫", "。", "ok"]


# -- text corpora -----------------------------------------------------------------------------------
def test_text_round_trip(tmp_path):
    src = write_lines(tmp_path / "a.txt", SENTENCES)
    summary = prepare_text([str(src)], str(tmp_path / "out"), shard_rows=2, max_len=32,
                           test_fraction=0, progress=False)  # fmt: skip
    manifest = verify(str(tmp_path / "out"))
    assert manifest["kind"] == "text" and manifest["tokenizer"] == "word"
    assert manifest["special_ids"] == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    assert [s["file"] for s in manifest["splits"]["train"]["shards"]] == [
        "train-00000.parquet",
        "train-00001.parquet",
        "train-00002.parquet",
    ]
    assert manifest["summary"]["train"]["kept"] == summary.splits["train"].kept == 5
    cfg = ModelConfig(**model_config_kwargs(manifest))
    assert (cfg.start_id, cfg.eos_id, cfg.pad_id, cfg.max_len) == (1, 2, 0, 32)

    tokens_NT, lengths_N = read_split(str(tmp_path / "out"), "train")
    assert tokens_NT.shape == (5, 32) and tokens_NT.dtype == torch.int64
    codec = load_codec(str(tmp_path / "out"))
    assert codec.vocab_size == manifest["vocab_size"] == summary.vocab_size
    assert [codec.decode(row) for row in tokens_NT.tolist()] == [
        "a man riding a bike down the street .",
        "two dogs play in the park .",
        "the cat 's toy is under the couch , is n't it ?",
        "a plate of food ( pasta and salad ) .",
        "people wait for the bus .",
    ]
    rows = torch.arange(5)
    assert (tokens_NT[rows, lengths_N - 1] == EOS_ID).all()
    assert (tokens_NT[0, lengths_N[0] :] == PAD_ID).all()
    assert lengths_N.tolist() == [10, 8, 14, 11, 7]  # tokens + EOS


def test_codec_unknown_words_and_decode(corpus):
    codec = load_codec(str(corpus))
    ids, unknown = codec.encode_with_unknown("Sentence NUMBER zebra is here!")
    assert unknown == ["zebra", "!"]
    assert ids.count(UNK_ID) == 2 and codec.encode("sentence") == ids[:1]
    assert codec.decode([BOS_ID, *ids, EOS_ID, 7, PAD_ID]) == "sentence number <unk> is here <unk>"
    assert EOS_ID not in codec.encode("<eos> <pad>")  # special names in text are not control ids


def test_dropped_lines_are_counted(tmp_path):
    src = tmp_path / "mixed.txt"
    src.write_bytes(
        b"a good line .\n\n   \t \n\xff\xfe bad\n"
        + b"word " * 40
        + b"\nanother good line\r\ncaf\xc3\xa9 ok"  # CRLF, and a last line without newline
    )
    summary = prepare_text(
        [str(src)], str(tmp_path / "out"), max_len=8, test_fraction=0, progress=False
    )
    counts = summary.splits["train"]
    assert (counts.lines_read, counts.kept) == (7, 3)
    assert (counts.dropped_empty, counts.dropped_too_long, counts.dropped_invalid_utf8) == (2, 1, 1)
    assert load_manifest(str(tmp_path / "out"))["summary"]["train"]["dropped_invalid_utf8"] == 1
    codec = load_codec(str(tmp_path / "out"))
    decoded = [codec.decode(r) for r in read_split(str(tmp_path / "out"), "train")[0].tolist()]
    assert decoded == ["a good line .", "another good line", "café ok"]


def test_too_long_boundary_counts_eos(tmp_path):
    src = write_lines(tmp_path / "a.txt", ["one two three", "one two three four"])
    summary = prepare_text(
        [str(src)], str(tmp_path / "out"), max_len=4, test_fraction=0, progress=False
    )
    assert (summary.splits["train"].kept, summary.splits["train"].dropped_too_long) == (1, 1)


def test_chinese_with_char_and_word(tmp_path):
    lines = ["我喜欢猫。", "今天天气很好", "猫 在 睡觉"]
    src = write_lines(tmp_path / "zh.txt", lines)
    prepare_text([str(src)], str(tmp_path / "char"), tokenizer="char", test_fraction=0, progress=False)
    tokens_NT, lengths_N = read_split(str(tmp_path / "char"), "train")
    assert lengths_N.tolist() == [len(line) + 1 for line in lines]  # every character, EOS
    codec = load_codec(str(tmp_path / "char"))
    assert [codec.decode(r) for r in tokens_NT.tolist()] == lines

    prepare_text([str(src)], str(tmp_path / "word"), tokenizer="word", test_fraction=0, progress=False)
    codec = load_codec(str(tmp_path / "word"))
    decoded = [codec.decode(r) for r in read_split(str(tmp_path / "word"), "train")[0].tolist()]
    assert decoded == ["我 喜 欢 猫 。", "今 天 天 气 很 好", "猫 在 睡 觉"]


def test_the_char_path_equals_the_char_tokenizer_on_any_unicode():
    """prepare's char tokenizer (code-point counts, numpy ids) against tokenizers' own char
    pipeline trained and run on the same lines: the same vocabulary and the same rows."""
    from raygan.data.tokenizer import train_tokenizer

    rng = random.Random(0)
    alphabet = ("abcXYZ 09.,!?'\"\t\r\x01\x7f éüß ñ 我喜欢猫。ＡＢ 😀🚀 e\u0301 \u200b\u2028\u00a0"
                "\U0001f1fa\U0001f1f8 ا ب ת κ Ж")
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(3000)]
    lines = [line.strip() for line in lines if line.strip()]
    for vocab_size, min_frequency in ((None, 1), (40, 1), (None, 420)):
        reference = train_tokenizer("char", [lines[:2000]], vocab_size=vocab_size,
                                    min_frequency=min_frequency)  # fmt: skip
        ours = data.char_tokenizer(data.char_counts([lines[:2000]]), vocab_size=vocab_size,
                                   min_frequency=min_frequency)  # fmt: skip
        assert ours.get_vocab() == reference.get_vocab()
        expected, found = data.SplitCounts(), data.SplitCounts()
        want = data._encode(reference, lines, 20, expected)
        got = data.encoder(ours, "char")(lines, 20, found)
        assert got.equals(want) and found == expected
        assert (expected.unk_tokens > 0) == (ours.get_vocab_size() < 4 + len(set("".join(lines))))


@pytest.mark.parametrize("threads", [False, True], ids=["one-line path", "thread pool"])
def test_the_one_pass_word_path_equals_the_word_tokenizer_trained_and_run(threads):
    """prepare's word path (one pre-tokenizer pass, counts, then an id table) against the word
    tokenizer trained by tokenizers and run on the same lines: the same vocabulary and rows,
    with words the vocabulary leaves out (cut, too rare, only in the other lines) as UNK."""
    from raygan.data.tokenizer import train_tokenizer

    rng = random.Random(1)
    pieces = [*SOUP, "Zebra", "café", "我喜欢猫。", "ＡＢ", "😀", "e\u0301", "İstanbul", "ΣΑΣ"]
    lines = [
        "".join(rng.choice(pieces) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(1, 9)))
        for _ in range(3000)
    ]
    lines = [line.strip() for line in lines if line.strip()]
    train, other = lines[:2000], lines[2000:]
    for vocab_size, min_frequency in ((None, 1), (40, 1), (None, 200)):
        reference = train_tokenizer("word", [train], vocab_size=vocab_size,
                                    min_frequency=min_frequency)  # fmt: skip
        words, found = data.WordIds(threads=threads), data.SplitCounts()
        rows, counts = data.encode_words(words, train, 12, found)
        more, _ = data.encode_words(words, other, 12, found)
        ours = data.word_tokenizer(words.words(), counts, vocab_size=vocab_size,
                                   min_frequency=min_frequency)  # fmt: skip
        assert ours.get_vocab() == reference.get_vocab()
        ids = data.id_table(ours, words.words())
        expected = data.SplitCounts()
        for kept, texts in ((rows, train), (more, other)):
            got, unknown = data.remap_rows(kept, ids)
            want = data._encode(reference, texts, 12, expected)
            assert got.equals(want)
            found.unk_tokens += unknown
        assert found == expected and expected.unk_tokens > 0 and expected.dropped_too_long > 0


def test_the_bpe_word_path_equals_the_bpe_tokenizer():
    """prepare's bpe encoder (ASCII split by str.split, each distinct word through the model
    once) against the tokenizer's own encode_batch: the same rows, on lines with runs of spaces,
    tabs, the Metaspace character itself, combining marks and characters the merges never saw."""
    from raygan.data.tokenizer import train_tokenizer

    rng = random.Random(2)
    pieces = ["the", "dog", "Dog", "it's", " ", "  ", "\t", "\u2581", "a\u2581b", "café", "cafe\u0301",
              "我喜欢", "😀", "ＡＢ", "x", "yz", ".", ",", "İ", "ß", "ﬁ"]  # fmt: skip
    lines = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    lines = [line.strip() for line in lines if line.strip()]
    unseen = [line for line in lines[:1500] if "😀" not in line]  # 😀: UNK
    reference = train_tokenizer("bpe", [unseen], vocab_size=60, min_frequency=2)
    for cache in (data.BpeWords.CACHE_WORDS, 5):
        words = data.BpeWords(reference)
        words.CACHE_WORDS = cache
        expected, found = data.SplitCounts(), data.SplitCounts()
        want = data._encode(reference, lines, 16, expected)
        assert words.encode(lines, 16, found).equals(want) and found == expected
        assert expected.unk_tokens > 0 and expected.dropped_too_long > 0
    assert any(line.isascii() and "  " in line for line in lines)  # both paths ran


def test_bpe_round_trip_keeps_case(tmp_path):
    src = write_lines(tmp_path / "a.txt", SENTENCES * 4)
    summary = prepare_text(
        [str(src)], str(tmp_path / "out"), tokenizer="bpe", vocab_size=80, test_fraction=0,
        progress=False,
    )
    assert summary.vocab_size <= 80
    codec = load_codec(str(tmp_path / "out"))
    decoded = [codec.decode(r) for r in read_split(str(tmp_path / "out"), "train")[0].tolist()]
    assert decoded == SENTENCES * 4


def test_file_uris_for_input_and_output(tmp_path):
    src = write_lines(tmp_path / "a.txt", SENTENCES)
    out_uri = (tmp_path / "out").as_uri()
    prepare_text([src.as_uri()], out_uri, test_fraction=0.4, seed=3, progress=False)
    manifest = verify(out_uri)
    assert (tmp_path / "out" / "manifest.json").is_file()
    train_N = read_split(out_uri, "train")[0].shape[0]
    test_N = read_split(out_uri, "test")[0].shape[0]
    assert train_N + test_N == 5 and manifest["splits"]["test"]["rows"] == test_N
    assert load_codec(out_uri).decode(read_split(out_uri, "train")[0][0].tolist())


def test_test_fraction_is_deterministic_and_disjoint(tmp_path):
    src = write_lines(tmp_path / "a.txt", [f"line {i}" for i in range(1000)])

    def split_of(seed: int, name: str) -> tuple[set[str], set[str]]:
        out = str(tmp_path / name)
        prepare_text(
            [str(src)], out, tokenizer="char", test_fraction=0.2, seed=seed, progress=False
        )
        codec = load_codec(out)
        return tuple(
            {codec.decode(r) for r in read_split(out, split)[0].tolist()}
            for split in ("train", "test")
        )

    train, test = split_of(0, "a")
    assert not train & test and len(train | test) == 1000
    assert 150 < len(test) < 250
    assert split_of(0, "b") == (train, test)
    assert split_of(1, "c")[1] != test


def test_prepare_is_reproducible(tmp_path):
    src = write_lines(tmp_path / "a.txt", SENTENCES)
    for name in ("a", "b"):
        prepare_text([str(src)], str(tmp_path / name), test_fraction=0.3, progress=False)
    manifest_a = (tmp_path / "a" / "manifest.json").read_text()
    assert manifest_a == (tmp_path / "b" / "manifest.json").read_text()  # shard sha256s included
    assert '"sha256"' in manifest_a


# -- oracle corpora ---------------------------------------------------------------------------------
def test_random_oracle(tmp_path):
    out = str(tmp_path / "oracle")
    summary = prepare_oracle(
        out, oracle="random", num_samples=200, num_test=50, vocab_size=50, max_len=8, seed=4,
        shard_rows=64, progress=False,
    )  # fmt: skip
    manifest = verify(out)
    assert summary.splits["train"].kept == 200
    assert (manifest["kind"], manifest["tokenizer"], manifest["special_ids"]) == (
        "oracle",
        None,
        None,
    )
    assert model_config_kwargs(manifest) == {
        "vocab_size": 50, "max_len": 8, "start_id": 0, "eos_id": None, "pad_id": None,
    }  # fmt: skip
    assert len(manifest["splits"]["train"]["shards"]) == 4
    train_NT, lengths_N = read_split(out, "train")
    test_NT, _ = read_split(out, "test")
    assert train_NT.shape == (200, 8) and test_NT.shape == (50, 8)
    assert (lengths_N == 8).all() and train_NT.min() >= 0 and train_NT.max() < 50
    assert not torch.equal(train_NT[:50], test_NT)  # different seeds
    rebuilt, fresh = load_oracle(out), Oracle.random(vocab_size=50, max_len=8, seed=4)
    assert all(
        torch.equal(a, b) for a, b in zip(rebuilt.parameters(), fresh.parameters(), strict=True)
    )
    assert load_codec(out).decode(train_NT[0].tolist()) == " ".join(map(str, train_NT[0].tolist()))


@pytest.mark.skipif(not SEQGAN_NPZ.is_file(), reason=f"SeqGAN oracle absent: {SEQGAN_NPZ}")
def test_seqgan_oracle(tmp_path):
    out = str(tmp_path / "seqgan")
    prepare_oracle(
        out,
        oracle="seqgan",
        oracle_path=str(SEQGAN_NPZ),
        num_samples=64,
        num_test=0,
        progress=False,
    )
    manifest = verify(out)
    oracle = manifest["oracle"]
    assert oracle["sha256"] == hashlib.sha256(SEQGAN_NPZ.read_bytes()).hexdigest()
    assert (manifest["vocab_size"], manifest["max_len"], oracle["file"]) == (5000, 20, "oracle.npz")
    tokens_NT, _ = read_split(out, "train")
    assert tokens_NT.shape == (64, 20)
    nll = load_oracle(out).token_nll(tokens_NT).mean().item()
    assert 4.5 < nll < 7.0  # its own samples score 5.75 on average


def test_seqgan_oracle_needs_a_path(tmp_path):
    with pytest.raises(RayganError, match="oracle_path"):
        prepare_oracle(str(tmp_path / "o"), oracle="seqgan", num_samples=10, progress=False)
    with pytest.raises(RayganError, match=r"nowhere\.npz"):
        prepare_oracle(
            str(tmp_path / "o"), oracle="seqgan", oracle_path=str(tmp_path / "nowhere.npz"),
            progress=False,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


# -- training batches -------------------------------------------------------------------------------
def row_ids(corpus: Path, tokens_BT: torch.Tensor) -> list[int]:
    """Map each batch row back to its index in read_split's order."""
    all_NT, _ = read_split(str(corpus), "train")
    index = {tuple(row): i for i, row in enumerate(all_NT.tolist())}
    return [index[tuple(row)] for row in tokens_BT.tolist()]


@pytest.fixture(params=["memory", "stream"])
def Batches(request):
    """RankBatches, or StreamBatches with windows of one 40-row shard (buffer 20 rows): the
    tests below hold for both."""
    if request.param == "memory":
        return RankBatches
    return functools.partial(StreamBatches, buffer_rows=20)


def test_rank_batches_disjoint_equal_and_covering(corpus, Batches):
    W, b = 3, 5
    ranks = [
        Batches(str(corpus), rank=r, world_size=W, batch_size_per_rank=b, seed=7)
        for r in range(W)
    ]
    assert all(rb.steps_per_epoch == len(rb) == 103 // (W * b) == 6 for rb in ranks)
    per_rank = [list(rb.iter_epoch(2)) for rb in ranks]
    assert all(len(batches) == 6 for batches in per_rank)
    seen = [
        i for batches in per_rank for tokens_BT, _ in batches for i in row_ids(corpus, tokens_BT)
    ]
    assert len(seen) == len(set(seen)) == 6 * W * b  # disjoint; 103 - 90 remainder rows dropped
    tokens_BT, lengths_B = per_rank[0][0]
    assert tokens_BT.shape == (b, 32) and tokens_BT.dtype == lengths_B.dtype == torch.int64
    assert (lengths_B == 7).all()  # 6 words + EOS


def test_rank_batches_equal_the_single_process_global_batch(corpus, Batches):
    W, b = 4, 3
    single = list(Batches(str(corpus), batch_size_per_rank=W * b, seed=1).iter_epoch(5))
    ranks = [list(Batches(str(corpus), rank=r, world_size=W, batch_size_per_rank=b, seed=1).iter_epoch(5)) for r in range(W)]  # fmt: skip
    for step, (tokens_BT, lengths_B) in enumerate(single):
        assert torch.equal(tokens_BT, torch.cat([ranks[r][step][0] for r in range(W)]))
        assert torch.equal(lengths_B, torch.cat([ranks[r][step][1] for r in range(W)]))


def test_rank_batches_shuffle_per_epoch_and_resume(corpus, Batches):
    rb = Batches(str(corpus), batch_size_per_rank=10, seed=0)
    epoch0 = [row_ids(corpus, t) for t, _ in rb.iter_epoch(0)]
    assert epoch0 == [row_ids(corpus, t) for t, _ in rb.iter_epoch(0)]
    assert epoch0 != [row_ids(corpus, t) for t, _ in rb.iter_epoch(1)]
    assert sorted(i for ids in epoch0 for i in ids) != list(range(100))  # not the first 100 rows
    resumed = [row_ids(corpus, t) for t, _ in rb.iter_epoch(0, start_step=4)]
    assert resumed == epoch0[4:]
    fresh = Batches(str(corpus), batch_size_per_rank=10, seed=0, epoch=0, start_step=4)
    assert [row_ids(corpus, t) for t, _ in fresh] == epoch0[4:]  # the iterable form
    assert list(rb.iter_epoch(0, start_step=rb.steps_per_epoch)) == []
    with pytest.raises(RayganError, match="fewer than one global batch"):
        Batches(str(corpus), world_size=2, rank=1, batch_size_per_rank=60)
    with pytest.raises(RayganError, match="rank"):
        Batches(str(corpus), world_size=2, rank=2, batch_size_per_rank=1)


def test_stream_batches_hold_at_most_two_windows_and_follow_their_own_order(tmp_path):
    """Shards of several row groups; the order is RankBatches' scheme over windows of row
    groups, so it differs from RankBatches' order but covers the same rows."""
    lines = [f"line {i} ." for i in range(500)]
    src = write_lines(tmp_path / "a.txt", lines)
    out = str(tmp_path / "out")
    data.READ_BLOCK_BYTES, block = 256, data.READ_BLOCK_BYTES  # ~30 lines per row group
    try:
        prepare_text([str(src)], out, shard_rows=200, test_fraction=0, progress=False)
    finally:
        data.READ_BLOCK_BYTES = block
    stream = StreamBatches(out, batch_size_per_rank=16, buffer_rows=64, seed=3)
    assert len(stream.units) > 10 and len({path for path, _, _ in stream.units}) == 3
    reads = []
    real_read = stream._read_unit
    stream._read_unit = lambda unit: reads.append(unit) or real_read(unit)
    codec = load_codec(out)
    epoch = [[codec.decode(r) for r in t.tolist()] for t, _ in stream.iter_epoch(1)]
    assert len(epoch) == 500 // 16 and len({x for batch in epoch for x in batch}) == 31 * 16
    assert sorted(reads) == list(range(len(stream.units)))  # each row group read once an epoch
    memory = RankBatches(out, batch_size_per_rank=16, seed=3)
    assert epoch != [[codec.decode(r) for r in t.tolist()] for t, _ in memory.iter_epoch(1)]
    reads.clear()
    resumed = [[codec.decode(r) for r in t.tolist()] for t, _ in stream.iter_epoch(1, 20)]
    assert resumed == epoch[20:] and len(set(reads)) < len(stream.units)  # no replay
    with pytest.raises(RayganError, match="smaller than one global batch"):
        StreamBatches(out, batch_size_per_rank=16, world_size=8, buffer_rows=64)


# -- failures ---------------------------------------------------------------------------------------
@pytest.fixture()
def small(tmp_path) -> Path:
    src = write_lines(tmp_path / "a.txt", SENTENCES)
    test = write_lines(tmp_path / "t.txt", SENTENCES[:2])
    prepare_text([str(src)], str(tmp_path / "out"), test_inputs=[str(test)], progress=False)
    return tmp_path / "out"


def test_missing_manifest(tmp_path):
    with pytest.raises(RayganError, match=r"manifest\.json not found"):
        load_manifest(str(tmp_path))


def test_missing_shard(small):
    (small / "train-00000.parquet").unlink()
    for check in (verify, lambda d: read_split(d, "train")):
        with pytest.raises(RayganError, match=r"train-00000\.parquet.*missing"):
            check(str(small))


def test_sha256_mismatch_names_both_hashes(small):
    expected = load_manifest(str(small))["splits"]["train"]["shards"][0]["sha256"]
    shutil.copy(small / "test-00000.parquet", small / "train-00000.parquet")  # valid, not ours
    found = hashlib.sha256((small / "train-00000.parquet").read_bytes()).hexdigest()
    with pytest.raises(RayganError, match=r"train-00000\.parquet") as err:
        verify(str(small))
    assert found in str(err.value) and expected in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_parquet(small, damage):
    shard = small / "train-00000.parquet"
    content = shard.read_bytes()
    shard.write_bytes(
        content[: len(content) // 2] if damage == "truncated" else b"\x00garbage" * 50
    )
    with pytest.raises(RayganError, match=r"train-00000\.parquet: sha256"):
        verify(str(small))
    with pytest.raises(RayganError, match=r"train-00000\.parquet is not a readable Parquet"):
        read_split(str(small), "train")
    with pytest.raises(RayganError, match=r"train-00000\.parquet is not a readable Parquet"):
        RankBatches(str(small), batch_size_per_rank=1)


def test_wrong_schema(small):
    table = pa.table({"tokens": pa.array([[1, 2]], pa.list_(pa.int64())), "length": [2]})
    pq.write_table(table, small / "test-00000.parquet")
    with pytest.raises(RayganError, match=r"test-00000\.parquet: schema .*int64.*expected"):
        read_split(str(small), "test")


def test_empty_corpus(small, tmp_path):
    manifest = json.loads((small / "manifest.json").read_text())
    manifest["splits"]["train"] = {"rows": 0, "shards": []}
    (small / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RayganError, match=r"manifest\.json: the train split has no rows"):
        verify(str(small))
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b"\n  \n\xff\n")
    with pytest.raises(RayganError, match=r"blank\.txt was kept"):
        prepare_text([str(blank)], str(tmp_path / "none"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "blank.txt", "out", "t.txt"]


def test_existing_output_is_refused_unless_overwrite(small):
    src = small.parent / "a.txt"
    with pytest.raises(RayganError, match=f"{small}.*not empty.*--overwrite"):
        prepare_text([str(src)], str(small), progress=False)
    (small / "stale.txt").write_text("old")
    prepare_text([str(src)], str(small), tokenizer="char", overwrite=True, progress=False)
    assert load_manifest(str(small))["tokenizer"] == "char" and not (small / "stale.txt").exists()
    empty = small.parent / "empty"
    empty.mkdir()
    prepare_text([str(src)], str(empty), progress=False)  # an empty directory is fine
    assert (empty / "manifest.json").is_file()


def test_missing_input_file(tmp_path):
    with pytest.raises(RayganError, match=r"input file .*nope\.txt does not exist"):
        prepare_text([str(tmp_path / "nope.txt")], str(tmp_path / "out"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_prepare_leaves_nothing_and_keeps_the_old_corpus(small, monkeypatch):
    before = {p.name: p.read_bytes() for p in small.iterdir()}

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data._ShardWriter, "write", explode)  # after the word rows are kept
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_text([str(small.parent / "a.txt")], str(small), overwrite=True, progress=False)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_text([str(small.parent / "a.txt")], str(small.parent / "new"), progress=False)
    assert {p.name: p.read_bytes() for p in small.iterdir()} == before
    assert sorted(p.name for p in small.parent.iterdir()) == ["a.txt", "out", "t.txt"]


def test_bad_options_are_refused(tmp_path):
    src = write_lines(tmp_path / "a.txt", SENTENCES)
    cases = [
        ({"tokenizer": "sentencepiece"}, "tokenizer"),
        ({"max_len": 1}, "max_len"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": 0.1, "test_inputs": [str(src)]}, "not both"),
        ({"vocab_size": 4}, "vocab_size"),
    ]
    for options, message in cases:
        with pytest.raises(RayganError, match=message):
            prepare_text([str(src)], str(tmp_path / "out"), progress=False, **options)
    assert not (tmp_path / "out").exists()


# -- CLI --------------------------------------------------------------------------------------------
def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="raygan prepare")
    add_prepare_arguments(parser)
    return parser.parse_args(argv)


def test_cli_text_and_oracle(tmp_path, capsys):
    src = write_lines(tmp_path / "a.txt", SENTENCES)
    out = str(tmp_path / "text")
    args = cli(["--input", str(src), "--out", out, "--tokenizer", "char", "--max-len", "64", "--test-fraction", "0", "--no-progress"])  # fmt: skip
    assert run_prepare(args) == 0
    printed = capsys.readouterr().out
    assert "| train | 5 | 5 | 0 | 0 | 0 |" in printed and f"wrote {out}" in printed
    assert load_manifest(out)["tokenizer"] == "char" and load_manifest(out)["max_len"] == 64

    out = str(tmp_path / "oracle")
    args = cli(["--oracle", "random", "--num-samples", "30", "--num-test", "5", "--vocab-size", "20", "--max-len", "6", "--out", out, "--no-progress"])  # fmt: skip
    assert run_prepare(args) == 0
    assert read_split(out, "train")[0].shape == (30, 6)


def test_defaults_keep_the_data_and_hold_out_a_test_split(tmp_path, capsys):
    """Without --max-len the length keeps 99% of the training lines (and says so); without
    --test-input 5% of the lines are held out; losing more than 1% of the lines is a warning."""
    lines = [" ".join(["w"] * (3 + i % 10)) + f" {i}" for i in range(1000)]  # 4..13 tokens
    lines[::100] = [" ".join(["long"] * 60)] * 10  # 1% very long lines
    src = write_lines(tmp_path / "a.txt", lines)
    out = str(tmp_path / "out")
    assert run_prepare(cli(["--input", str(src), "--out", out, "--no-progress"])) == 0
    captured = capsys.readouterr()
    manifest = load_manifest(out)
    summary = manifest["summary"]
    assert manifest["max_len"] == 14  # the 13-token lines and EOS: the 60-token ones are the 1%
    train = summary["train"]
    note = f"max_len 14 (not given): keeps {train['kept'] / train['lines_read']:.1%} of the first {train['lines_read']:,} training lines"
    assert note in captured.out and manifest["source"]["max_len_note"].startswith(note)
    assert manifest["source"]["test_fraction"] == data.DEFAULT_TEST_FRACTION
    test_share = summary["test"]["lines_read"] / len(lines)
    assert 0.03 < test_share < 0.07 and summary["train"]["lines_read"] + summary["test"]["lines_read"] == 1000
    assert "warning" not in captured.err  # 1.0% dropped is not more than 1%

    args = cli(["--input", str(src), "--out", out, "--overwrite", "--max-len", "12", "--test-fraction", "0", "--no-progress"])  # fmt: skip
    assert run_prepare(args) == 0
    captured = capsys.readouterr()
    dropped = load_manifest(out)["summary"]["train"]["dropped_too_long"]
    assert "test" not in [s for s, v in load_manifest(out)["splits"].items() if v["rows"]]
    assert captured.err.strip() == (
        f"warning: dropped {dropped:,} of 1,000 lines ({dropped / 1000:.1%}): {dropped:,} longer "
        "than max_len 12 allows; a larger --max-len keeps them"
    )


def test_cli_rejects_mixed_modes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["--input", "a.txt", "--oracle", "random", "--out", "x"])
    with pytest.raises(SystemExit):
        cli(["--out", "x"])
    capsys.readouterr()
    with pytest.raises(RayganError, match="--tokenizer cannot be used with --oracle"):
        run_prepare(
            cli(["--oracle", "random", "--tokenizer", "word", "--out", str(tmp_path / "x")])
        )
    with pytest.raises(RayganError, match="--num-samples cannot be used with --input"):
        run_prepare(cli(["--input", "a.txt", "--num-samples", "3", "--out", str(tmp_path / "x")]))


def test_is_test_fraction_is_uniform():
    mask = data._is_test(seed=0, first=0, n=100_000, fraction=0.25)
    assert abs(mask.mean() - 0.25) < 0.01
    assert np.array_equal(mask[500:600], data._is_test(seed=0, first=500, n=100, fraction=0.25))
