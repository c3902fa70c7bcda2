"""The names a W&B run really logged, read from its local run folder (`wandb/offline-run-*` or
`wandb/run-*`): config keys as W&B addresses them (`method.budget`), history keys (`run.log`),
summary keys, tables, and the run's group.

The `.wandb` file is the run's transaction log: a LevelDB-style log (32 KiB blocks of framed,
CRC-checked chunks) after a 7-byte W&B header, each record a `wandb_internal_pb2.Record`
protobuf. wandb's own Python reader of this format is gone from recent releases (the Go core
writes it), so the ~20 lines of framing are read here; the records are parsed with wandb's
protobuf definitions.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version
CHUNK = struct.Struct("<IHB")  # crc32 of (type byte + data), data length, type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclasses.dataclass
class LoggedNames:
    config: set[str] = dataclasses.field(default_factory=set)  # dotted: method.budget
    history: set[str] = dataclasses.field(default_factory=set)  # run.log keys
    summary: set[str] = dataclasses.field(default_factory=set)
    tables: set[str] = dataclasses.field(default_factory=set)  # keys whose value is a wandb.Table
    groups: set[str] = dataclasses.field(default_factory=set)
    runs: int = 0

    def update(self, other: "LoggedNames") -> "LoggedNames":
        for f in ("config", "history", "summary", "tables", "groups"):
            getattr(self, f).update(getattr(other, f))
        self.runs += other.runs
        return self


def run_files(roots: Iterable[Path]) -> list[Path]:
    """Every run's `.wandb` file at or under `roots` (run folders, sweep folders, outputs/)."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if root.is_file() and root.suffix == ".wandb":
            found.add(root)
        elif root.is_dir():
            found.update(p for p in root.rglob("*.wandb") if p.parent.name.startswith(("offline-run-", "run-")))
    return sorted(found)


def records(path: Path) -> Iterator[Any]:
    """The protobuf records of one `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data) if len(data) >= HEADER.size else (b"", 0, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run log (.wandb)")
    pos, pending = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK.size:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        chunk = data[pos + CHUNK.size: pos + CHUNK.size + length]
        if kind == 0 or len(chunk) < length:  # zero padding, or a log cut short by a crash
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: corrupt record at byte {pos}")
        pos += CHUNK.size + length
        if kind in (FIRST, MIDDLE):
            pending += chunk
            continue
        record = pb.Record()
        record.ParseFromString(pending + chunk if kind == LAST else chunk)
        pending = b""
        yield record


def _flatten(value: Any, prefix: str) -> Iterator[str]:
    """A nested config value's W&B column names: {'budget': 4} under 'method' -> 'method.budget'."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}")


def _items(items, out: set[str], tables: set[str]) -> None:
    for item in items:
        if item.key:
            out.add(item.key)
        elif item.nested_key:  # a media value (table, image): its fields under the logged key
            out.add(item.nested_key[0])
            if list(item.nested_key[1:]) == ["_type"] and json.loads(item.value_json) == "table-file":
                tables.add(item.nested_key[0])


def logged_names(path: Path) -> LoggedNames:
    """What one run (its `.wandb` file) logged."""
    names = LoggedNames(runs=1)
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            if record.run.run_group:
                names.groups.add(record.run.run_group)
            updates = record.run.config.update
        elif kind == "config":
            updates = record.config.update
        elif kind == "history":
            _items(record.history.item, names.history, names.tables)
            continue
        elif kind == "summary":
            _items(record.summary.update, names.summary, names.tables)
            continue
        else:
            continue
        for item in updates:
            key = item.key or ".".join(item.nested_key)
            if not key.startswith("_"):  # _wandb: the SDK's own bookkeeping
                names.config.update(_flatten(json.loads(item.value_json), key))
    return names


def logged_under(roots: Iterable[Path]) -> LoggedNames:
    """The union of what every run at or under `roots` logged."""
    names = LoggedNames()
    for path in run_files(roots):
        names.update(logged_names(path))
    return names
