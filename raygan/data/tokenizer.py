"""Tokenizers for text corpora (HF `tokenizers`, saved as one tokenizer.json) and the Codec.

Three kinds, all with the same special ids (PAD=0, BOS=1, EOS=2, UNK=3):
- `word`: WordLevel; lowercases and splits like `nltk.word_tokenize(line.lower(), preserve_line=True)`
  (the benchmark papers' tokenization: "wheel." -> wheel . ; "don't" -> do n't), written as
  tokenizers normalizers and one Split regex, so it runs in Rust and lives in tokenizer.json (5-10x
  faster than nltk); CJK ideographs and CJK punctuation become one token each (as BERT does).
- `bpe`: BPE over Metaspace words (case kept), trained to `vocab_size`.
- `char`: every character is a token (case and spaces kept).

The special tokens live in the vocabulary but are not "added tokens", so text that happens to contain
"<eos>" cannot inject a control id into a sequence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from raygan.core.errors import RayganError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # in id order
TOKENIZER_KINDS = ("word", "bpe", "char")
DEFAULT_BPE_VOCAB = 8000
_UNLIMITED_VOCAB = 1 << 30

# BERT's "Chinese character" blocks, plus CJK symbols/punctuation and fullwidth punctuation.
_CJK = (
    r"\x{3000}-\x{303F}\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}\x{FF01}-\x{FF0F}"
    r"\x{FF1A}-\x{FF20}\x{FF3B}-\x{FF40}\x{FF5B}-\x{FF65}\x{20000}-\x{2A6DF}\x{2A700}-\x{2CEAF}"
    r"\x{2F800}-\x{2FA1F}"
)

# nltk's NLTKWordTokenizer (3.10) on lowercased text, as tokenizers components. nltk inserts spaces
# with ~25 regex substitutions in turn; as Replace normalizers those copy the line per match (0.5
# MB/s). Here only nltk's rewrites of `"` are normalizers; every split is one regex pass over the line
# (isolating each match), then a whitespace split. "Followed by a space" in nltk's later rules means
# followed by whitespace, the line end or a piece split off earlier (_BEFORE_SPACE). Alternatives
# start with a character (lookbehinds come after it), which lets the regex engine skip ahead.
# Agreement: 20,000/20,000 COCO train+test lines but one, and ~99.9% of random punctuation soup
# (tests/test_data.py). Known differences: nltk's `,`/`:` rule consumes the next character, so it
# keeps ",and" in "coffee,,and" (that one COCO line); and it splits "'tis" only after a space.
_NLTK_QUOTES = (  # nltk pads these with spaces too; the whitespace split removes them
    (r'\A"', " `` "),  # an opening double quote becomes ``
    (r"(?<=[ (\[{<«“‘„`])(?:\"|'')", " `` "),
    (r'"', " '' "),  # every other one becomes ''
)
_FINAL_PERIOD = r"\.(?<!\.\.)(?=[\])}>\"'»”’\s]*\z)"  # not after a period; closers may follow
_SEPARATOR = r"``|`|''|--|\.{2,}|[:,](?!\d)|[«“‘„»”’;@#$%&?!*\x{2012}-\x{2015}\]\[(){}<>]"
_SPACE_NEXT = rf"(?:{_SEPARATOR})|{_FINAL_PERIOD}|\s|\z"
_BEFORE_SPACE = rf"(?={_SPACE_NEXT}|'(?:{_SPACE_NEXT}))"  # nltk splits a closing ' off first
# ... but 's 'm 'd and ' are one pass: a ' counts only if nltk split it before (a space after it)
_SPLIT_BEFORE_QUOTES = (
    rf"\s|\.{{2,}}|[:,](?!\d)|[;@#$%&?!«“‘„`\x{{2012}}-\x{{2015}}]|{_FINAL_PERIOD}"
)
_BEFORE_SPACE_1 = rf"(?={_SPACE_NEXT}|'(?:{_SPLIT_BEFORE_QUOTES}))"
_CONTRACTIONS = (("can", "not"), ("d", "'ye"), ("gim", "me"), ("gon", "na"), ("got", "ta"))
_CONTRACTIONS += (("lem", "me"), ("more", "'n"), ("wan", "na"))  # nltk: wanna only before a space


def _contraction(first: str, second: str) -> str:
    """Split first+second off both sides (nltk: " can not ")."""
    end = _BEFORE_SPACE if first == "wan" else r"\b"
    return rf"{first}(?<=\b{first})(?={second}{end})|{second}(?<=\b{first}{second}){end}"


_NLTK_SPLIT = "|".join(
    (
        _FINAL_PERIOD,
        _SEPARATOR,  # punctuation, brackets, quotes; , and : unless a digit follows (3,000 10:30)
        r"'(?<!\w')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)",  # an opening single quote
        rf"'(?<=[^'\s]')(?:[smd]|){_BEFORE_SPACE_1}",  # it 's, dogs '
        rf"'(?<=[^'\s]')(?:ll|re|ve){_BEFORE_SPACE}",  # we 're
        rf"n(?<=[^'\s]n)'t{_BEFORE_SPACE}",  # do n't
        *(_contraction(first, second) for first, second in _CONTRACTIONS),
        f"[{_CJK}]",  # one token per CJK character (nltk keeps CJK runs whole)
    )
)


def _word_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_NLTK_SPLIT), "isolated"), pre_tokenizers.WhitespaceSplit()]
    )


def build_tokenizer(kind: str) -> Tokenizer:
    """An untrained tokenizer of `kind`, pipeline only."""
    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS[UNK_ID]))
        quotes = [normalizers.Replace(Regex(p), r) for p, r in _NLTK_QUOTES]
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), *quotes])
        tok.pre_tokenizer = _word_pre_tokenizer()
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
    elif kind == "char":
        tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS[UNK_ID]))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), "isolated")  # (?m): . matches \n
        tok.decoder = decoders.Fuse()
    else:
        raise RayganError(f"tokenizer must be one of {', '.join(TOKENIZER_KINDS)}; got {kind!r}")
    return tok


def train_tokenizer(
    kind: str, batches: Iterable[list[str]], *, vocab_size: int | None, min_frequency: int
) -> Tokenizer:
    """Train a `kind` tokenizer on batches of lines, streaming (the trainer keeps only counts)."""
    tok = build_tokenizer(kind)
    specials = list(SPECIAL_TOKENS)
    if kind == "bpe":
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or DEFAULT_BPE_VOCAB,
            min_frequency=min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    else:
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size or _UNLIMITED_VOCAB,
            min_frequency=min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    tok.train_from_iterator(batches, trainer=trainer)
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(name) == i, f"{name} got id {tok.token_to_id(name)}, expected {i}"
    return _without_added_tokens(tok)


def trained_vocabulary(words, counts, *, vocab_size: int | None, min_frequency: int) -> list[str]:
    """The words `train_tokenizer` keeps for word and char, from their counts: WordLevelTrainer's
    order (most frequent first, ties by word: UTF-8 bytes, i.e. code points), at least
    `min_frequency`, the first `vocab_size` - 4 (the special tokens come first)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(words, list):
        words = pa.array(words, pa.string())
    schema = pa.schema([("word", pa.string()), ("count", pa.int64())])
    table = pa.table({"word": words, "count": counts}).cast(schema)
    table = table.filter(pc.invert(pc.is_in(table["word"], pa.array(SPECIAL_TOKENS))))
    table = table.group_by("word").aggregate([("count", "sum")])
    table = table.filter(pc.greater_equal(table["count_sum"], min_frequency))
    order = pc.sort_indices(table, [("count_sum", "descending"), ("word", "ascending")])
    kept = table["word"].take(order).to_pylist()
    return kept if vocab_size is None else kept[: max(vocab_size - len(SPECIAL_TOKENS), 0)]


def wordlevel_tokenizer(kind: str, words: list[str]) -> Tokenizer:
    """A trained `kind` (word or char) tokenizer with the special tokens, then `words`, as ids."""
    tok = build_tokenizer(kind)
    vocab = {name: i for i, name in enumerate((*SPECIAL_TOKENS, *words))}
    tok.model = models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[UNK_ID])
    return tok


def _without_added_tokens(tok: Tokenizer) -> Tokenizer:
    """Keep the specials in the vocabulary but stop matching them inside raw text."""
    data = json.loads(tok.to_str())
    data["added_tokens"] = []
    return Tokenizer.from_str(json.dumps(data))


class Codec:
    """Text <-> token ids for a prepared corpus (`raygan.data.read.load_codec(dir)` builds one).

    Oracle corpora have no tokenizer: their "text" is token ids separated by spaces.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None,
        *,
        vocab_size: int,
        eos_id: int | None = EOS_ID,
        pad_id: int | None = PAD_ID,
        bos_id: int | None = BOS_ID,
    ):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_id, self.pad_id, self.bos_id = eos_id, pad_id, bos_id

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without EOS; unknown words map to UNK."""
        return self.encode_with_unknown(text)[0]

    def encode_with_unknown(self, text: str) -> tuple[list[int], list[str]]:
        """(ids, the words of `text` that became UNK, as written in `text`)."""
        if self.tokenizer is None:
            return self._encode_ids(text), []
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        unknown = [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == UNK_ID]
        return list(enc.ids), unknown

    def _encode_ids(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            if not word.isdigit() or int(word) >= self.vocab_size:
                raise RayganError(
                    f"oracle token {word!r} is not an id in [0, {self.vocab_size}); "
                    "oracle text is token ids separated by spaces"
                )
            ids.append(int(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: stops at EOS, drops PAD and BOS (oracle: ids joined by spaces)."""
        kept = list(self._until_eos(ids))
        if self.tokenizer is None:
            return " ".join(map(str, kept))
        return self.tokenizer.decode(kept, skip_special_tokens=False)

    def _until_eos(self, ids: Iterable[int]) -> Iterator[int]:
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                return
            if i not in (self.pad_id, self.bos_id):
                yield i
