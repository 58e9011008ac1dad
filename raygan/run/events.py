"""The scalars and texts a run wrote to TensorBoard, read back without TensorBoard itself."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the tensorboardX event files under `logdir`, by tag, as (step, value) in
    file order."""
    return read_events(logdir)[0]


def read_events(logdir: str | Path):
    """(scalars, texts) of the tensorboardX event files under `logdir`: by tag, (step, value) in
    file order; a text's tag is the one it was written under (`add_text("samples", ...)`:
    "samples")."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, list[tuple[int, str]]] = {}
    for event in iter_events(logdir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
            elif value.metadata.plugin_data.plugin_name == "text" and value.tensor.string_val:
                tag = value.tag.removesuffix("/text_summary")
                text = value.tensor.string_val[0].decode("utf-8", "replace")
                texts.setdefault(tag, []).append((event.step, text))
    return scalars, texts


def iter_events(logdir: str | Path) -> Iterator:
    """Every Event proto of the event files under `logdir`, file by file in name order. The files
    are TFRecords (length, its CRC, an Event proto, its CRC); the CRCs are not checked, and a
    record cut short by a crash ends the file."""
    from tensorboardX.proto.event_pb2 import Event

    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (size,) = struct.unpack_from("<Q", data, pos)
            record = data[pos + 12 : pos + 12 + size]
            pos += 12 + size + 4
            if len(record) < size:
                break
            yield Event.FromString(record)
