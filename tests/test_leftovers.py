"""The test cluster's teardown: processes that outlive Ray's shutdown are found and killed by id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import kill_leftovers

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _sleeper(ray_tmp: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["sleep", str(seconds)], env={**os.environ, "RAY_TMPDIR": ray_tmp})


def test_kills_only_the_processes_started_under_the_cluster_dir(tmp_path):
    ours, other = _sleeper(str(tmp_path), 60), _sleeper(f"{tmp_path}-other", 60)
    try:
        assert kill_leftovers(str(tmp_path), grace_s=0.5) == [ours.pid]
        assert ours.wait(timeout=5) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_a_process_that_exits_within_the_grace_period_is_left_alone(tmp_path):
    quick = _sleeper(str(tmp_path), 0.3)
    try:
        assert kill_leftovers(str(tmp_path), grace_s=10) == []  # its zombie does not count
        assert quick.wait(timeout=5) == 0
    finally:
        quick.kill()
        quick.wait()
