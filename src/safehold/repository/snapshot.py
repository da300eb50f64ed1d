"""Snapshots: the record of one backup, stored as a sealed JSON object.

A snapshot names its root tree and the chain it belongs to. Its storage name (the hash of
its stored bytes) is its id. A snapshot is written only after every pack and index it
needs, so a listed snapshot is always complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from safehold.errors import FormatError
from safehold.ids import NO_SNAPSHOT, HexId, SnapshotId


@dataclass
class Snapshot:
    """The record of one backup (docs/format.md, "Snapshots"): its root tree, chain, source and
    summary; ``id`` is set once it is stored or loaded."""

    time: datetime
    tree: HexId
    paths: list[str]
    hostname: str
    chain: HexId
    chain_seq: int = 0  # 0 = the chain's full backup, n = the n-th incremental
    isolated: bool = False
    username: str = ""
    tags: list[str] = field(default_factory=list)
    parent: SnapshotId = NO_SNAPSHOT
    program_version: str = ""
    source: str = ""  # "directory", "stdin", "command", "postgres"...: what produced it
    source_name: str = ""  # the configured source's name ("pg-main"); empty without a config
    summary: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)  # unreadable files
    original: SnapshotId = NO_SNAPSHOT  # a copy's source (a copy of a copy keeps the first)
    attrs: list[str] = field(default_factory=list)  # extended attributes saved: acls, xattrs
    id: SnapshotId = NO_SNAPSHOT  # set when loaded or saved; not stored

    def to_json(self) -> dict[str, Any]:
        """The snapshot as its stored JSON holds it (optional keys only when set, so older
        snapshots keep their bytes)."""
        d: dict[str, Any] = {
            "version": 1,
            "time": self.time.isoformat(),
            "tree": self.tree,
            "paths": self.paths,
            "hostname": self.hostname,
            "username": self.username,
            "tags": self.tags,
            "parent": self.parent,
            "chain": {"id": self.chain, "seq": self.chain_seq, "isolated": self.isolated},
            "program_version": self.program_version,
            "source": self.source,
            "summary": self.summary,
            "errors": self.errors,
        }
        # Optional keys are written only when set, so older snapshots keep their exact bytes.
        if self.original:  # only copies carry it
            d["original"] = self.original
        if self.source_name:
            d["source_name"] = self.source_name
        if self.attrs:
            d["attrs"] = self.attrs
        return d

    def encode(self) -> bytes:
        """The snapshot's canonical JSON bytes (sorted keys), as stored."""
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes, snap_id: SnapshotId) -> Snapshot:
        """A snapshot from its stored JSON; raises :class:`FormatError` if it is malformed."""
        try:
            d = json.loads(raw)
            chain = d["chain"]
            # Ids other code turns into bytes: a snapshot that the key's holder wrote with
            # junk in them is damaged here, not a traceback later.
            if not _is_hex(d["tree"], 64) or not _is_hex(chain["id"], 32):
                raise ValueError("its tree or chain id is not a hex id")
            if not all(isinstance(p, str) for p in d["paths"]):
                raise ValueError("its paths are not strings")
            if datetime.fromisoformat(d["time"]).tzinfo is None:
                raise ValueError("its time has no time zone")
            return cls(
                id=snap_id,
                time=datetime.fromisoformat(d["time"]),
                tree=d["tree"],
                paths=list(d["paths"]),
                hostname=d["hostname"],
                username=d.get("username", ""),
                tags=list(d.get("tags", [])),
                parent=d.get("parent", ""),
                chain=chain["id"],
                chain_seq=int(chain.get("seq", 0)),
                isolated=bool(chain.get("isolated", False)),
                program_version=d.get("program_version", ""),
                source=d.get("source", ""),
                summary=dict(d.get("summary", {})),
                errors=list(d.get("errors", [])),
                original=d.get("original", ""),
                source_name=d.get("source_name", ""),
                attrs=[str(a) for a in d.get("attrs", [])],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError(f"snapshot {snap_id[:8]} is not valid: {exc}") from exc

    @property
    def short_id(self) -> str:
        """The first 8 hex digits of the id, as listings show it."""
        return self.id[:8]


def _is_hex(value: object, length: int) -> bool:
    if not isinstance(value, str) or len(value) != length:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True
