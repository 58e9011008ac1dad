"""Checkpoints: the full training state in one directory, written atomically, loaded without pickle.

A checkpoint directory holds
    state.pt        G, D, the three optimizers, step, data position, reward baseline, early stopping
    config.json     the resolved Config
    checkpoint.json step, phase, metrics, where the data came from, and state.pt's sha256
    manifest.json   the data manifest (vocab, special ids, max_len) ...
    tokenizer.json  ... and tokenizer, or oracle.npz for oracle data, so that sampling, serving and
                    NLL_oracle need nothing but this directory.
`state.pt` is read with `torch.load(weights_only=True)`: tensors, numbers, strings and containers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from raygan.core.config import Config
from raygan.core.errors import RayganError
from raygan.data import storage

STATE_FILE = "state.pt"
CONFIG_FILE = "config.json"
META_FILE = "checkpoint.json"
DATA_FILES = ("manifest.json", "tokenizer.json", "oracle.npz")  # raygan.data's file names


def save_checkpoint(
    directory: str | Path,
    *,
    state: dict[str, Any],
    config: Config,
    meta: dict[str, Any],
    data_dir: str | None = None,
) -> Path:
    """Write a checkpoint to the local `directory`: everything goes into a sibling temp dir
    first, then one rename publishes it, so a reader never sees half a checkpoint. The data's
    manifest and tokenizer/oracle come from `data_dir` (a local path or a URI)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        torch.save(state, tmp / STATE_FILE)
        meta = {**meta, "state_sha256": sha256_of(tmp / STATE_FILE)}
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
        if data_dir is not None:
            for name in DATA_FILES:
                src = storage.join(data_dir, name)
                if storage.is_file(src):
                    (tmp / name).write_bytes(storage.read_bytes(src))
        storage.replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small file (local or URI) so that readers see the old or the new content, never a part."""
    storage.write_text(path, text)


def copy_checkpoint(src: str | Path, dst: str | Path) -> str | Path:
    """Copy a local checkpoint directory to `dst` (local: atomically; or a URI), e.g. final/."""
    storage.upload_dir(src, dst)
    return dst


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """Accept a checkpoint directory, or a run/tune directory holding `final/` or `best/`, local
    or a URI. A checkpoint in object storage is downloaded to a local cache directory first."""
    for candidate in (str(path), storage.join(path, "final"), storage.join(path, "best")):
        if storage.is_file(storage.join(candidate, STATE_FILE)):
            if storage.is_uri(candidate):
                local = storage.cache_dir(candidate, "checkpoints")
                try:
                    return storage.download_dir(candidate, local)
                except OSError as exc:
                    raise RayganError(f"{candidate}: cannot copy the checkpoint to {local} ({exc}); "
                                      f"${storage.CACHE_VAR} says where copies go") from None  # fmt: skip
            return Path(candidate)
    raise RayganError(f"{path} holds no checkpoint ({STATE_FILE} not found, nor final/ or best/)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], Config, dict[str, Any]]:
    """(state, Config, meta); RayganError naming the directory if a file is missing, unreadable,
    or state.pt does not match the sha256 its checkpoint.json recorded (a truncated copy)."""
    directory = resolve_checkpoint_dir(path)
    meta, config = _read_checked(directory)
    try:
        state = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise RayganError(f"checkpoint {directory} is unreadable: {exc}") from None
    meta["directory"] = str(directory)
    return state, config, meta


def checkpoint_config(path: str | Path) -> Config:
    """The config a checkpoint was trained with, without loading its state."""
    return _read_checked(resolve_checkpoint_dir(path))[1]


def check_checkpoint(directory: str | Path) -> None:
    """RayganError where `load_checkpoint` would fail, without loading the state when its
    sha256 is recorded (hashing it suffices; older checkpoints are loaded to find out)."""
    meta, _ = _read_checked(Path(directory))
    if "state_sha256" not in meta:
        load_checkpoint(directory)


def _read_checked(directory: Path) -> tuple[dict[str, Any], Config]:
    """checkpoint.json and config.json, with state.pt checked against the recorded sha256."""
    try:
        meta = json.loads((directory / META_FILE).read_text())
        expected = meta.get("state_sha256")  # absent in checkpoints written before it existed
        if expected is not None and sha256_of(directory / STATE_FILE) != expected:
            raise RayganError(
                f"checkpoint {directory} is damaged: {STATE_FILE} does not match the sha256 "
                f"recorded in {META_FILE}"
            )
        config = Config.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise RayganError(f"checkpoint {directory} is unreadable: {exc}") from None
    return meta, config


def load_generator(path: str | Path, device: str | torch.device = "cpu"):
    """(Generator in eval mode, Config, meta) from a checkpoint directory."""
    from raygan.core.models import Generator

    state, config, meta = load_checkpoint(path)
    gen = Generator(config.model)
    gen.load_state_dict(state["generator"])
    return gen.to(device).eval(), config, meta


def load_discriminator(path: str | Path):
    """(D, G, Config) from a checkpoint directory, both nets in eval mode on the CPU, read
    once; a log_ratio D scores with this G."""
    from raygan.core.models import Generator, make_discriminator

    state, config, _ = load_checkpoint(path)
    gen = Generator(config.model)
    gen.load_state_dict(state["generator"])
    disc = make_discriminator(config.model, gen.eval())
    disc.load_state_dict(state["discriminator"])
    return disc.eval(), gen, config
