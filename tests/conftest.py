"""Shared fixtures: one tiny model configuration drives every CPU test."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from raygan.core.config import GANConfig, ModelConfig

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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One Ray cluster for the whole session: 2 nodes x 1 CPU, so multi-node placement is real."""
    import tempfile

    import ray
    from ray.cluster_utils import Cluster

    from raygan.run.ray_env import ray_environment

    ray_environment()
    # Unix socket paths must stay short: a fresh dir under /tmp, not pytest's deep tmp path.
    ray_tmp = tempfile.mkdtemp(prefix="rg-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = ray_tmp
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def oracle_data(tmp_path_factory) -> str:
    """A tiny random-oracle corpus: vocab 30, length 8, 256 training and 64 held-out rows."""
    from raygan.data.prepare import prepare_oracle

    out = tmp_path_factory.mktemp("oracle") / "data"
    prepare_oracle(
        str(out), oracle="random", num_samples=256, num_test=64, vocab_size=30, max_len=8,
        seed=0, progress=False,
    )  # fmt: skip
    return str(out)


# Train settings every trainer test starts from: tiny nets, a few steps of each phase. The loss is
# `standard`: under rsgan D's output bias gets an analytically zero gradient, which Adam turns
# into lr-sized steps along float noise, so it cannot be compared across process counts.
TINY_TRAIN = {
    "batch_size": 8, "mle_steps": 4, "d_pretrain_steps": 1, "adv_steps": 4, "eval_every": 4,
    "eval_samples": 32, "checkpoint_every": 3, "g_embed_dim": 8, "g_hidden_dim": 8,
    "d_embed_dim": 8, "d_hidden_dim": 8, "d_dropout": 0.0, "rollout_num": 2, "rng_streams": 2,
    "num_workers": 2, "loss": "standard",
}  # fmt: skip


TINY_WORDS = ("a", "man", "woman", "dog", "cat", "sits", "on", "the", "red", "blue", "bench",
              "near", "tree")  # fmt: skip


def prepare_tiny_text(root: Path, *, num_lines: int, max_len: int = 10) -> str:
    """A seeded corpus of 3-8 word sentences from TINY_WORDS, prepared under root/data."""
    from raygan.data.prepare import prepare_text

    rng = torch.Generator().manual_seed(0)
    lines = [
        " ".join(
            TINY_WORDS[i]
            for i in torch.randint(0, len(TINY_WORDS), (int(n),), generator=rng).tolist()
        )
        for n in torch.randint(3, 9, (num_lines,), generator=rng)
    ]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    data = str(root / "data")
    prepare_text(
        [str(root / "corpus.txt")], data, max_len=max_len, test_fraction=0.2, progress=False
    )
    return data
