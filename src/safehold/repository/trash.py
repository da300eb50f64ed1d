"""Trash records: prune's first phase names packs to delete later (docs/format.md, "Trash").

A trash record is a sealed JSON object ``{"created": ISO time, "packs": [hex ids]}``. Packs it
names are no longer in any index written by prune, but stay stored until a later prune
proves that no process that could still use them is alive (see
:mod:`safehold.repository.prune`). Backups must not adopt trashed packs as "unindexed".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from safehold.errors import ObjectNotFound
from safehold.repository.format import T_TRASH
from safehold.repository.repository import Repository


@dataclass
class TrashRecord:
    name: str
    created: datetime
    packs: list[bytes]


def write_trash(repo: Repository, packs: list[bytes]) -> TrashRecord:
    created = repo.clock.now()
    doc = {"created": created.isoformat(), "packs": sorted(p.hex() for p in packs)}
    name = repo.save_object("trash/", T_TRASH, json.dumps(doc).encode())
    return TrashRecord(name, created, list(packs))


def list_trash(repo: Repository) -> list[TrashRecord]:
    out = []
    for obj in repo.storage.list("trash/"):
        try:
            doc = json.loads(repo.load_object(obj.name, T_TRASH))
        except ObjectNotFound:
            continue
        out.append(
            TrashRecord(
                obj.name,
                datetime.fromisoformat(doc["created"]),
                [bytes.fromhex(h) for h in doc["packs"]],
            )
        )
    out.sort(key=lambda r: r.created)
    return out


def trashed_packs(repo: Repository) -> set[bytes]:
    return {p for rec in list_trash(repo) for p in rec.packs}
