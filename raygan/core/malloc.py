"""glibc malloc settings for the megabyte-sized tensors every training and sampling step makes.

glibc hands out blocks above its mmap threshold (128 KiB at start, raised as such blocks are
freed, at most 32 MiB) as fresh mappings from the kernel and unmaps them on free, and it trims
free memory at the heap's top back to the kernel; memory it gets back from the kernel is faulted
in page by page, zeroed. Which of a step's (rows, vocab) logits and probabilities (1-5 MB at
vocab 5000) take that path depends on the allocation history, so their cost varied 3-4x from
run to run. With a fixed 32 MiB threshold and no trimming, freed blocks stay in the heap for
the next step: (64, 5000) projection + softmax went from 2.2-3.4 ms to 0.75-0.9 ms on the
2-vCPU VM of BENCHMARKS.md, and an MLE step in a process's main thread from 74-133 ms to
63-87 ms (single runs each; the machine is noisy). Threads other than the main one allocate
from glibc's per-thread arenas, whose 64 MiB heaps are still created and unmapped as whole
heaps empty: Ray Train runs the training
function in a thread of its own, so its workers also start with MALLOC_ARENA_MAX=1
(`worker_env`), which sends every thread to the main heap: one worker's MLE step went from
0.094 to 0.082 s (scripts/bench_train.py). The cost: a process's resident memory does not
shrink after its peak. Blocks above 32 MiB still come from mmap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
OPT_OUT = "RAYGAN_MALLOC_TUNING"

_applied: bool | None = None


def _opted_out() -> bool:
    return os.environ.get(OPT_OUT, "1") == "0"


def keep_freed_memory() -> bool:
    """Apply the settings once per process; True when they are in force.

    A no-op (False) without glibc (macOS, musl), when RAYGAN_MALLOC_TUNING=0, or when the user
    chose glibc's thresholds already (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if _opted_out() or any(
        var in os.environ for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library by that name, or one without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    )
    return _applied


def worker_env() -> dict[str, str]:
    """Environment for Ray Train's worker processes: MALLOC_ARENA_MAX=1, so that the thread Ray
    Train runs the training function in allocates from glibc's main heap, which the settings
    above keep, instead of a per-thread arena. Empty when the user opted out or set it."""
    if _opted_out() or "MALLOC_ARENA_MAX" in os.environ:
        return {}
    return {"MALLOC_ARENA_MAX": "1"}
