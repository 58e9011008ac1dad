"""What every benchmark script shares: the machine it ran on, recorded beside its numbers."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "ray", "pyarrow", "tokenizers")


def machine() -> dict[str, Any]:
    """The CPU model and count, platform, Python, the versions of the packages that set the
    speed, and torch's thread counts in this process (a benchmark's own workers may differ)."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in
              (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]  # fmt: skip
    info: dict[str, Any] = {
        "cpu": models[0] if models else platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for name in PACKAGES:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    info["torch_threads"] = torch.get_num_threads()
    info["torch_interop_threads"] = torch.get_num_interop_threads()
    info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line of `machine()` for a table's caption: 'CPU model, N CPUs, torch threads T'."""
    info = info or machine()
    gpu = f", {info['gpu']}" if info.get("gpu") else ""
    return f"{info['cpu']}, {info['cpus']} CPUs, torch threads {info['torch_threads']}{gpu}"
