"""BENCHMARKS.md sections generated from benchmark JSON, never typed by hand.

Each section sits between `<!-- BEGIN name -->` and `<!-- END name -->`; rewriting one leaves the
rest of the file as it was.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from raygan.checkpoint import atomic_write_text


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


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the tensorboardX event files under `logdir`, by tag, as (step, value) in
    file order."""
    return read_events(logdir)[0]


def read_events(logdir: str | Path):
    """(scalars, texts) of the tensorboardX event files under `logdir`: by tag, (step, value) in
    file order; a text's tag is the one it was written under (`add_text("samples", ...)`:
    "samples"). The files are TFRecords (length, its CRC, an Event proto, its CRC); the CRCs are
    not checked, and a record cut short by a crash ends the file."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, list[tuple[int, str]]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (size,) = struct.unpack_from("<Q", data, pos)
            record = data[pos + 12 : pos + 12 + size]
            pos += 12 + size + 4
            if len(record) < size:
                break
            event = Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.metadata.plugin_data.plugin_name == "text" and value.tensor.string_val:
                    tag = value.tag.removesuffix("/text_summary")
                    text = value.tensor.string_val[0].decode("utf-8", "replace")
                    texts.setdefault(tag, []).append((event.step, text))
    return scalars, texts
