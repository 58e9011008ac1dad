"""What a prepared corpus directory holds; written by raygan.data.prepare, read by raygan.data.read.

A prepared directory (a local path or a pyarrow URI: file://, s3://, gs://) holds
  manifest.json        format, kind, tokenizer, vocab_size, special ids, max_len, every shard with its
                       rows and sha256, the prepare summary and the source; written LAST
  tokenizer.json       text corpora: the HF tokenizer (raygan.data.tokenizer)
  oracle.npz           SeqGAN-oracle corpora: a copy of the oracle, so the directory stands alone
  train-00000.parquet  tokens: list<int32> (EOS included, no padding), length: int32
  test-00000.parquet   the held-out split, same schema
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
ORACLE_FILE = "oracle.npz"
SPLITS = ("train", "test")
ORACLE_KINDS = ("seqgan", "random")
SHARD_SCHEMA = pa.schema([("tokens", pa.list_(pa.int32())), ("length", pa.int32())])
