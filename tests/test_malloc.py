"""raygan.core.malloc: glibc keeps freed tensor memory in its heap instead of mapping fresh pages."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A fresh process allocates a 4 MiB tensor and prints whether the settings were applied and how
# many bytes glibc holds in mmapped blocks while the tensor lives (mallinfo2().hblkhd).
PROGRAM = textwrap.dedent(
    """
    import ctypes, torch
    from raygan.core.malloc import keep_freed_memory
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                    "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    mallinfo2.restype = MallInfo2
    applied = keep_freed_memory()
    before = mallinfo2().hblkhd
    tensor = torch.ones(2**20)
    print(applied, mallinfo2().hblkhd - before)
    """
)


def _run(**env: str) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], env={**os.environ, **env}, capture_output=True,
        text=True, check=True, timeout=120,
    ).stdout.split()  # fmt: skip
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_a_step_sized_tensor_comes_from_the_heap_not_fresh_pages():
    assert _run() == ("True", 0)
    applied, mapped = _run(RAYGAN_MALLOC_TUNING="0")  # glibc's defaults: an mmap of its own
    assert applied == "False" and mapped >= 4 * 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_the_users_own_malloc_setting_wins():
    assert _run(MALLOC_MMAP_THRESHOLD_="262144")[0] == "False"


def test_ray_train_workers_allocate_from_the_main_heap(monkeypatch):
    """The trainer starts its workers with MALLOC_ARENA_MAX=1 unless the user chose otherwise."""
    from raygan.core.config import Config
    from raygan.core.malloc import OPT_OUT
    from raygan.run.train import make_trainer

    def worker_env_vars() -> dict:
        trainer = make_trainer({}, Config(), storage_path="/tmp/raygan-unused", name="x")
        return (trainer.run_config.worker_runtime_env or {}).get("env_vars", {})

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv(OPT_OUT, raising=False)
    assert worker_env_vars() == {"MALLOC_ARENA_MAX": "1"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's own value reaches workers unchanged
    assert worker_env_vars() == {}
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv(OPT_OUT, "0")
    assert worker_env_vars() == {}
