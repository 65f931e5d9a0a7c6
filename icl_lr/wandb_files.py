"""Read W&B's local run files (offline or not yet synced) without a server.

A run's `run-<id>.wandb` file is a LevelDB-format log of wandb's own protobuf `Record`s
(wandb.proto.wandb_internal_pb2). wandb 0.31 ships no Python reader for it, so this decodes the
log framing and leaves every record to wandb's schema. The tests read runs back with it.
"""

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from wandb.proto import wandb_internal_pb2

MAGIC = b":W&B"
FILE_HEADER = 7  # ":W&B", magic 0xBEE1, version byte
BLOCK = 32768
CHUNK_HEADER = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every complete record in the file; a record cut short (a killed process) ends the scan."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = FILE_HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        if len(chunk) < length or kind not in (FULL, FIRST, MIDDLE, LAST):
            return
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            yield wandb_internal_pb2.Record.FromString(pending)


def _item_key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def _items(items) -> dict:
    return {_item_key(i): json.loads(i.value_json) for i in items}


@dataclass
class RunFile:
    """What one run file recorded: identity, config, history rows, summary, artifacts."""

    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list = field(default_factory=list)
    sweep_id: str = ""
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # {name, type, aliases, files}
    exit_code: int | None = None

    @classmethod
    def load(cls, path: Path) -> "RunFile":
        path = Path(path)
        if path.is_dir():
            path = next(path.glob("run-*.wandb"))
        run = cls(path)
        for record in read_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                r = record.run
                run.run_id, run.project, run.entity, run.group = r.run_id, r.project, r.entity, r.run_group
                run.job_type, run.name, run.tags, run.sweep_id = r.job_type, r.display_name, list(r.tags), r.sweep_id
                run.config |= _items(r.config.update)
            elif kind == "config":
                run.config |= _items(record.config.update)
            elif kind == "history":
                run.history.append(_items(record.history.item))
            elif kind == "summary":
                run.summary |= _items(record.summary.update)
                for item in record.summary.remove:
                    run.summary.pop(_item_key(item), None)
            elif kind == "artifact":
                a = record.artifact
                files = [entry.path for entry in a.manifest.contents]
                run.artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases), "files": files})
            elif kind == "exit":
                run.exit_code = record.exit.exit_code
        return run

    def config_value(self, dotted_key: str):
        """A nested config value by dotted key ('data.noise_std'); W&B stores {'value': ...} per top key."""
        top, *rest = dotted_key.split(".")
        value = self.config[top]
        value = value.get("value", value) if isinstance(value, dict) else value
        for key in rest:
            value = value[key]
        return value

