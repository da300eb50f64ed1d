"""Trash records: prune's first phase names packs to delete later (docs/format.md, "Trash").

A trash record is a sealed JSON object ``{"created": ISO time, "packs": [hex ids],
"index": [index file names]}``. The packs it names are garbage by the snapshots prune saw;
they stay stored, and listed by the record's own index files (``index``, which list
exactly those packs), until a later prune proves that no process that could still use them
is alive (see :mod:`safehold.repository.prune`). So a snapshot that a backup running
during the prune saves, deduplicated against one of these packs, is complete the moment it
is listed. Writers (backup, copy) must neither deduplicate against trashed packs nor adopt
them as "unindexed": :func:`writer_view` gives them an index without them.

Records written before the ``index`` field existed have none: their packs are in no index.

A record that cannot be read (damaged, junk) is skipped with a warning naming it: it can
only name packs that are garbage, and losing that name costs space, never data (its packs
look unindexed, and backups adopt them). ``check`` reports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from safehold.errors import IntegrityError, ObjectNotFound
from safehold.repository.format import T_TRASH
from safehold.repository.repository import Repository

__all__ = [
    "TrashRecord",
    "list_trash",
    "read_trash",
    "trashed_packs",
    "write_trash",
    "writer_view",
]


@dataclass
class TrashRecord:
    name: str
    created: datetime
    packs: list[bytes]
    index: list[str] = field(default_factory=list)  # index files that list exactly ``packs``


def write_trash(
    repo: Repository, packs: list[bytes], index: list[str] | None = None
) -> TrashRecord:
    created = repo.clock.now()
    doc: dict[str, Any] = {"created": created.isoformat(), "packs": sorted(p.hex() for p in packs)}
    if index:
        doc["index"] = sorted(index)
    name = repo.save_object("trash/", T_TRASH, json.dumps(doc).encode())
    return TrashRecord(name, created, list(packs), sorted(index or []))


def read_trash(repo: Repository, name: str) -> TrashRecord:
    """One record; a damaged or malformed one raises :class:`IntegrityError`."""
    raw = repo.load_object(name, T_TRASH)
    try:
        doc = json.loads(raw)
        created = datetime.fromisoformat(doc["created"])
        packs = [bytes.fromhex(h) for h in doc["packs"]]
        index = [str(n) for n in doc.get("index", [])]
        if created.tzinfo is None or any(len(p) != 32 for p in packs):
            raise ValueError("bad time zone or pack id")
        if any(not n.startswith("index/") or "/" in n[6:] for n in index):
            raise ValueError("bad index file name")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"{name} is not a valid trash record ({exc})") from exc
    return TrashRecord(name, created, packs, index)


def list_trash(repo: Repository, *, damaged: list[str] | None = None) -> list[TrashRecord]:
    """Every readable record, oldest first. A record that cannot be read is skipped: its
    name goes to ``damaged`` if given, and a warning to the repository's listeners."""
    out = []
    for obj in repo.storage.list("trash/"):
        try:
            out.append(read_trash(repo, obj.name))
        except ObjectNotFound:
            continue  # swept while we listed
        except IntegrityError as exc:
            if damaged is not None:
                damaged.append(obj.name)
            repo.warn(obj.name, f"skipped a damaged trash record ({exc.message})")
    out.sort(key=lambda r: r.created)
    return out


def trashed_packs(repo: Repository) -> set[bytes]:
    return {p for rec in list_trash(repo) for p in rec.packs}


def writer_view(repo: Repository) -> set[bytes]:
    """Load the index as a writer (backup, copy) must see it, and return the trashed packs.

    The trash is listed *before* the index is loaded. A record written after this listing
    was written after the caller's lock, so prune's sweep waits for the caller (and then
    rescues what its snapshot needs); a record listed here is dropped from the caller's
    index, so the caller never deduplicates against a pack the sweep may delete once the
    record's time has passed. Listing after loading would leave a window: the index loaded
    while the record's index files still listed the packs, the record swept (its packs
    deleted) before the listing.
    """
    trashed = trashed_packs(repo)
    repo.load_index()
    for pack_id in trashed:
        repo.index.remove_pack(pack_id)
    return trashed
