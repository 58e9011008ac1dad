"""What every benchmark script shares: one command line (`main`), and the machine it ran on,\nrecorded beside its numbers."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raygan.bench.markdown import replace_section
from raygan.core.errors import RayganError
from raygan.run.checkpoint import atomic_write_text

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


@dataclass(frozen=True)
class Benchmark:
    """One scripts/bench_*.py: what it measures and how its BENCHMARKS.md section reads.

    `measure(args)` runs the benchmark (args.smoke_test: tiny sizes that only check the script)
    and returns its JSON; `render(result)` writes the section from that JSON alone, so
    `--from-json` regenerates the section without measuring again; `exit_code(result)` turns a
    failed check inside the result into a non-zero exit."""

    section: str
    default_json: str
    measure: Callable[[argparse.Namespace], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    exit_code: Callable[[dict[str, Any]], int] | None = None
    out_is_json: bool = True
    """`--out` as the older spelling of `--json` (False where the script has an --out of its own)."""


def main(bench: Benchmark, description: str, argv: Sequence[str] | None = None) -> int:
    """The command line every benchmark script shares:

    --json PATH        where the measurements go (default: the published file; a smoke test
                       writes JSON only where --json names a file)
    --markdown PATH    also write the section into this file (BENCHMARKS.md)
    --from-json PATH   only rewrite --markdown's section from this JSON (no measuring)
    --smoke-test       tiny sizes: checks that the script runs, publishes nothing
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", help=f"write the results here (default {bench.default_json})")
    if bench.out_is_json:
        parser.add_argument("--out", dest="json", help=argparse.SUPPRESS)  # the older spelling
    parser.add_argument("--markdown", help="also write the section into this BENCHMARKS.md")
    parser.add_argument("--from-json", help="only write --markdown's section from this JSON")
    parser.add_argument("--smoke-test", action="store_true", help="tiny sizes; publishes nothing")
    if bench.add_arguments:
        bench.add_arguments(parser)
    args = parser.parse_args(argv)
    section = getattr(args, "section", None) or bench.section
    if args.from_json:
        if not args.markdown:
            parser.error("--from-json needs --markdown")
        result = json.loads(Path(args.from_json).read_text())
        replace_section(args.markdown, section, bench.render(result))
        return 0
    json_path = args.json or (None if args.smoke_test else bench.default_json)
    started = time.perf_counter()
    try:
        result = bench.measure(args)
    except RayganError as exc:  # a bad option or input: one line, no trace
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    result.setdefault("total_s", time.perf_counter() - started)
    # The script's own file, also where a test imports it as a module and calls main(argv).
    script = Path(sys.modules[bench.measure.__module__].__file__).name
    given = sys.argv[1:] if argv is None else list(argv)
    result.setdefault("command", shlex.join(["python", f"scripts/{script}", *given]))
    result.setdefault("machine", machine())
    result.setdefault("finished", time.strftime("%Y-%m-%d"))
    text = bench.render(result)
    print(text)
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=2, default=str) + "\n")
        print(f"wrote {json_path}")
    if args.markdown and not args.smoke_test:
        replace_section(args.markdown, section, text)
        print(f"updated {args.markdown}")
    return bench.exit_code(result) if bench.exit_code else 0
