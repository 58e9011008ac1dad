"""BENCHMARKS.md sections generated from benchmark JSON, never typed by hand.

Each section sits between `<!-- BEGIN name -->` and `<!-- END name -->`; rewriting one leaves the
rest of the file as it was.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from raygan.run.checkpoint import atomic_write_text


def replace_section(markdown_path: str | Path, name: str, body: str) -> None:
    path = Path(markdown_path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + f"\n\n{block}\n"
    )
    atomic_write_text(path, text)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def load_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
