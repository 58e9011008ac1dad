"""Object-storage paths: every directory option takes a pyarrow-filesystem URI (file:// here,
s3:// and gs:// on clusters) as well as a local path."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from raygan.cli import main
from raygan.core.errors import RayganError
from raygan.data import storage
from raygan.data.prepare import prepare_oracle
from raygan.run.checkpoint import resolve_checkpoint_dir
from tests.conftest import TINY_TRAIN


def test_text_and_directories_round_trip(tmp_path):
    uri = f"file://{tmp_path}/remote"
    storage.write_text(storage.join(uri, "a", "b.json"), '{"x": 1}')
    assert storage.is_file(storage.join(uri, "a", "b.json"))
    assert json.loads(storage.read_text(storage.join(uri, "a", "b.json"))) == {"x": 1}
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "f.txt").write_text("hello")
    storage.upload_dir(local, storage.join(uri, "copy"))
    back = storage.download_dir(storage.join(uri, "copy"), tmp_path / "back")
    assert (back / "sub" / "f.txt").read_text() == "hello"
    storage.delete(storage.join(uri, "copy"))
    assert storage.file_type(storage.join(uri, "copy")).name == "NotFound"
    with pytest.raises(RayganError, match="nosuchscheme"):
        storage.filesystem("nosuchscheme://x/y")


@pytest.fixture(scope="module")
def uri_data(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("remote")
    uri = f"file://{root}/data"
    prepare_oracle(uri, oracle="random", num_samples=256, num_test=64, vocab_size=30, max_len=8,
                   seed=0, progress=False)  # fmt: skip
    return uri


def test_train_reads_shards_and_writes_the_run_to_uris(ray_cluster, uri_data, tmp_path, capsys):
    from raygan.run.train import fit

    run_uri = f"file://{tmp_path}/run"
    overrides = {**TINY_TRAIN, "num_workers": 1}
    summary = fit(uri_data, run_uri, overrides, log=lambda *_: None)
    assert summary["final_checkpoint"] == f"{run_uri}/final"
    run_dir = tmp_path / "run"
    for name in ("run.json", "summary.json", "final/state.pt", "final/manifest.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))  # uploaded from rank 0's staging
    assert list((run_dir / "ray").iterdir())  # Ray Train's checkpoints went to the URI too
    # The same command resumes from the URI's run (nothing left to train), and sampling reads it.
    again = fit(uri_data, run_uri, overrides, log=lambda *_: None)
    assert again["final_step"] == summary["final_step"]
    capsys.readouterr()
    assert main(["sample", "--checkpoint", run_uri, "-n", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_tune_writes_results_and_best_to_a_uri(ray_cluster, uri_data, tmp_path, capsys):
    from raygan.run.tune import run_tune

    fixed = {k: v for k, v in TINY_TRAIN.items() if k not in ("eval_every", "checkpoint_every")}
    space = {
        "metric": "nll_oracle", "trials": 1, "perturbation_interval": 4, "report_every": 2,
        "fixed": {**fixed, "num_workers": 1},
        "search": {"g_lr": {"loguniform": [1e-3, 1e-2]}},
    }  # fmt: skip
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    tune_uri = f"file://{tmp_path}/tune"
    summary = run_tune(str(path), uri_data, tune_uri, scheduler="none", log=lambda *_: None)
    assert summary["best"]["checkpoint"] == f"{tune_uri}/best"
    for name in ("tune.json", "results.json", "results.md", "metric.png", "best/state.pt"):
        assert (tmp_path / "tune" / name).is_file(), name
    local = resolve_checkpoint_dir(tune_uri)  # best/ found through the URI, copied locally
    assert local.is_relative_to(os.environ[storage.CACHE_VAR])  # the session's (conftest)
    assert (local / "state.pt").is_file() and not str(local).startswith("file:")
    capsys.readouterr()
    assert main(["sample", "--checkpoint", f"{tune_uri}/best", "-n", "1"]) == 0


def test_uri_copies_are_cached_under_raygan_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.CACHE_VAR, str(tmp_path / "cache"))
    a = storage.cache_dir("s3://bucket/run/final", "checkpoints")
    assert a.parent == tmp_path / "cache" / "raygan-checkpoints"
    assert storage.cache_dir("s3://bucket/run/final", "checkpoints") == a  # stable per URI
    assert storage.cache_dir("s3://bucket/other/final", "checkpoints") != a
    monkeypatch.delenv(storage.CACHE_VAR)
    assert not storage.cache_dir("s3://bucket/run/final", "checkpoints").is_relative_to(tmp_path)


def test_an_unusable_cache_dir_is_a_one_line_error(tmp_path, monkeypatch):
    from raygan.run.checkpoint import STATE_FILE

    remote = tmp_path / "remote" / "final"
    remote.mkdir(parents=True)
    (remote / STATE_FILE).write_text("{}")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(storage.CACHE_VAR, str(tmp_path / "a_file"))
    with pytest.raises(RayganError, match=f"cannot copy the checkpoint to .*{storage.CACHE_VAR}"):
        resolve_checkpoint_dir(f"file://{remote}")


def test_missing_uri_checkpoint_is_named(tmp_path):
    with pytest.raises(RayganError, match="holds no checkpoint"):
        resolve_checkpoint_dir(f"file://{tmp_path}/nothing")
