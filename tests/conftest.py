"""Shared fixtures: one tiny model configuration drives every CPU test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from raygan.config import GANConfig, ModelConfig

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SEQGAN_ORACLE = SHARED_DATA / "seqgan_oracle" / "target_params.npz"

# Fixed-length (oracle-like) and variable-length (text-like: PAD=0, BOS=1, EOS=2) tiny models.
TINY = ModelConfig(
    vocab_size=12,
    max_len=6,
    g_embed_dim=8,
    g_hidden_dim=8,
    d_embed_dim=8,
    d_hidden_dim=8,
    d_dropout=0.0,
)
TINY_TEXT = ModelConfig(
    vocab_size=12,
    max_len=6,
    g_embed_dim=8,
    g_hidden_dim=8,
    d_embed_dim=8,
    d_hidden_dim=8,
    d_dropout=0.0,
    start_id=1,
    eos_id=2,
    pad_id=0,
)


@pytest.fixture(params=[TINY, TINY_TEXT], ids=["fixed", "variable"])
def tiny_cfg(request) -> ModelConfig:
    return request.param


@pytest.fixture
def gan_cfg() -> GANConfig:
    return GANConfig(rollout_num=3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def seqgan_oracle_path() -> Path:
    if not SEQGAN_ORACLE.is_file():
        pytest.skip(f"SeqGAN oracle not present at {SEQGAN_ORACLE} (../shared/data is optional)")
    return SEQGAN_ORACLE
