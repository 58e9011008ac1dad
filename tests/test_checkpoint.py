"""Checkpoints: a damaged one is named, not loaded; a failed write leaves the old ones intact;
resuming skips a damaged newest checkpoint for the newest good one. In-process, no Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray.train
import torch

from raygan.core.config import Config
from raygan.core.errors import RayganError
from raygan.run.checkpoint import (
    CONFIG_FILE,
    META_FILE,
    STATE_FILE,
    load_checkpoint,
    save_checkpoint,
)
from raygan.run.train import resolve_config, usable_checkpoint
from tests.conftest import TINY_TRAIN


def _save(directory: Path, oracle_data: str, step: int) -> Path:
    config = resolve_config(oracle_data, TINY_TRAIN)
    state = {"step": step, "weights": torch.arange(1000, dtype=torch.float32) * step}
    meta = {"step": step, "metrics": {"batches_consumed": 2 * step}}
    return save_checkpoint(directory, state=state, config=config, meta=meta,
                           data_dir=oracle_data)  # fmt: skip


def test_checkpoint_records_its_state_checksum_and_refuses_a_changed_state(oracle_data, tmp_path):
    directory = _save(tmp_path / "c", oracle_data, 3)
    state, _, meta = load_checkpoint(directory)
    assert state["step"] == 3 and len(meta["state_sha256"]) == 64
    # one byte changed, same size: torch may still read it, the checksum does not
    raw = bytearray((directory / STATE_FILE).read_bytes())
    raw[-100] ^= 0xFF
    (directory / STATE_FILE).write_bytes(bytes(raw))
    with pytest.raises(RayganError, match=rf"{directory} is damaged: state.pt does not match"):
        load_checkpoint(directory)


def test_checkpoint_without_checksum_still_loads(oracle_data, tmp_path):
    """Checkpoints written before the checksum existed are read as before."""
    directory = _save(tmp_path / "c", oracle_data, 3)
    meta = json.loads((directory / META_FILE).read_text())
    del meta["state_sha256"]
    (directory / META_FILE).write_text(json.dumps(meta))
    assert load_checkpoint(directory)[0]["step"] == 3


def test_checkpoint_from_before_the_placement_section_still_loads(oracle_data, tmp_path):
    """Ray placement keys (num_workers, use_gpu, ...) once sat in the trainer section; a config
    written then reads them into placement."""
    directory = _save(tmp_path / "c", oracle_data, 3)
    saved = json.loads((directory / CONFIG_FILE).read_text())
    saved["trainer"].update(saved.pop("placement"), num_workers=5)
    (directory / CONFIG_FILE).write_text(json.dumps(saved))
    _, config, _ = load_checkpoint(directory)
    assert config.placement.num_workers == 5 and "num_workers" not in config.to_dict()["trainer"]
    with pytest.raises(RayganError, match=r"schedule\.num_workers"):
        Config.from_dict({"schedule": {"num_workers": 5}})  # only the old home is accepted


def test_failed_write_leaves_the_previous_checkpoint_intact(oracle_data, tmp_path, monkeypatch):
    good = _save(tmp_path / "run" / "checkpoint_1", oracle_data, 1)
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def disk_full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")  # a partial file, then the error
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    for target in ("checkpoint_2", "checkpoint_1"):  # a new directory, and over the old one
        with pytest.raises(OSError, match="No space left"):
            _save(tmp_path / "run" / target, oracle_data, 2)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint_1"]  # no temp left
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    monkeypatch.undo()
    assert load_checkpoint(good)[0]["step"] == 1


def test_resume_skips_a_damaged_newest_checkpoint(oracle_data, tmp_path):
    root = tmp_path / "ray"
    paths = [_save(root / f"checkpoint_2026-12-03_10-00-0{i}", oracle_data, i) for i in (1, 2, 3)]
    (paths[2] / STATE_FILE).write_bytes((paths[2] / STATE_FILE).read_bytes()[:1000])  # truncated
    (paths[1] / META_FILE).write_text("{")  # unreadable metadata
    newest = ray.train.Checkpoint(str(paths[2]))
    warned = pytest.warns(UserWarning, match="resuming from .*10-00-01 instead")
    with warned as caught, usable_checkpoint(newest, warn=True) as (directory, bad):
        assert load_checkpoint(directory)[0]["step"] == 1
    message = str(caught[0].message)
    assert "10-00-03" in message and "10-00-02" in message and len(bad) == 2
    with usable_checkpoint(ray.train.Checkpoint(str(paths[0])), warn=True) as (directory, bad):
        assert Path(directory) == paths[0] and bad == []  # a good newest: used as is, no warning
    with usable_checkpoint(None, warn=True) as (directory, bad):
        assert directory is None and bad == []


def test_a_tune_trial_resumes_from_its_newest_good_checkpoint(oracle_data, tmp_path):
    """A trial's checkpoints (Tune names them checkpoint_000000, ...): its restart skips a damaged
    newest one as a training run does, and reports where it restarted from that one's meta."""
    import ray.tune

    from raygan.run.train import as_train_checkpoint
    from raygan.run.tune import _restored_from

    trial = tmp_path / "trial"
    paths = [_save(trial / f"checkpoint_{i:06d}", oracle_data, 10 * (i + 1)) for i in range(3)]
    (paths[2] / STATE_FILE).write_bytes((paths[2] / STATE_FILE).read_bytes()[:1000])
    newest = ray.tune.Checkpoint.from_directory(str(paths[2]))
    warned = pytest.warns(UserWarning, match="checkpoint_000001 instead")
    with warned, usable_checkpoint(as_train_checkpoint(newest), warn=True) as (directory, bad):
        assert Path(directory) == paths[1] and len(bad) == 1
        restored = _restored_from(directory, "t1")
        assert (restored["restored_step"], restored["restored_batches"]) == (20, 40)


def test_resume_with_no_loadable_checkpoint_is_a_clear_error(oracle_data, tmp_path):
    only = _save(tmp_path / "ray" / "checkpoint_2026-12-03_10-00-01", oracle_data, 1)
    (only / STATE_FILE).write_bytes(b"")
    refused = pytest.raises(RayganError, match=r"no checkpoint of this run loads .*--fresh starts")
    with refused, usable_checkpoint(ray.train.Checkpoint(str(only)), warn=False):
        pass
