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
from typing import Any

from safehold.ids import PackId
from safehold.repository.format import T_TRASH
from safehold.repository.index import Index
from safehold.repository.repository import Repository
from safehold.repository.trash_record import TrashRecord

__all__ = [
    "TrashRecord",
    "list_trash",
    "trashed_packs",
    "write_trash",
    "writer_view",
]


def write_trash(
    repo: Repository, packs: list[PackId], index: list[str] | None = None
) -> TrashRecord:
    """Store a trash record for ``packs`` (and the index files that list exactly them), dated
    by the repository's clock."""
    created = repo.clock.now()
    doc: dict[str, Any] = {"created": created.isoformat(), "packs": sorted(p.hex() for p in packs)}
    if index:
        doc["index"] = sorted(index)
    name = repo.save_object("trash/", T_TRASH, json.dumps(doc).encode())
    return TrashRecord(name, created, list(packs), sorted(index or []))


def list_trash(repo: Repository, *, damaged: list[str] | None = None) -> list[TrashRecord]:
    """Every readable record, oldest first (see :meth:`Repository.list_trash`)."""
    return repo.list_trash(damaged=damaged)


def trashed_packs(repo: Repository) -> set[PackId]:
    """Every pack some readable trash record names."""
    return {p for rec in list_trash(repo) for p in rec.packs}


def writer_view(repo: Repository) -> set[PackId]:
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
    repo.load_index(trashed=trashed)
    # Still readable, never deduplicated against: a parent snapshot saved while a prune
    # ran may have its trees there (the sweep rescues them for it).
    kept_apart = Index()
    for pack_id in trashed:
        rec = repo.index.packs.get(pack_id)
        if rec is not None:
            kept_apart.add_pack(rec)
            repo.index.remove_pack(pack_id)
    repo.read_only_packs = kept_apart
    return trashed
