"""Shared fixtures: one tiny model configuration drives every CPU test."""

from __future__ import annotations

import os
import shutil
import signal
import time
import warnings
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


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Checkpoints read from URIs are cached under this session's temp dir (Ray's workers, started
    later, inherit the variable), not the system's, where every test run would leave copies."""
    from raygan.data.storage import CACHE_VAR

    os.environ[CACHE_VAR] = str(tmp_path_factory.mktemp("cache"))


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
        left = kill_leftovers(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if left:
            warnings.warn(f"killed Ray processes left after the cluster's shutdown: {left}",
                          stacklevel=1)  # fmt: skip


def kill_leftovers(ray_tmp: str, grace_s: float = 10.0) -> list[int]:
    """Kill, by id, the processes (but this one) started under `ray_tmp` (their environment has
    RAY_TMPDIR=ray_tmp) that are still alive `grace_s` after the cluster's shutdown: a Ray worker
    that missed its raylet's exit (a Train controller once outlived a CI run by 17 minutes,
    holding ~400 MB). Returns the ids killed; Linux only ([] without /proc)."""
    deadline = time.monotonic() + grace_s
    while (left := _started_under(ray_tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = []
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # exited meanwhile
            continue
        killed.append(pid)
    return killed


def _started_under(ray_tmp: str) -> list[int]:
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:  # exited meanwhile, or another user's
            continue
    return [pid for pid in pids if pid != os.getpid() and _alive(pid)]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent (a killed child of this process stays one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


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
