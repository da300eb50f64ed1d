"""Before a forget: give the trashed packs the forgotten snapshots need an index of their own."""

from __future__ import annotations

from safehold.errors import IntegrityError
from safehold.repository.progress import NoProgress
from safehold.repository.prune.sweep import still_needed
from safehold.repository.prune.usage import (
    index_view,
    load_live_index,
    load_records,
    read_headers,
    walk_snapshots,
)
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import list_trash

__all__ = ["rescue_for_forget"]


def rescue_for_forget(repo: Repository, snaps: list[Snapshot]) -> int:
    """Before ``snaps`` are forgotten, give the trashed packs they need an index file of
    their own (rescue them); returns how many packs were rescued. The caller holds a lock.

    A snapshot saved while a prune ran may need packs of that prune's trash record until a
    sweep rescues them. A reader that took its lock after the record was written, and then
    found such a snapshot, does not hold back that record's sweep; were the snapshot
    forgotten meanwhile, the sweep would delete data the reader is reading. Rescued here,
    the packs are live again, and a later prune that finds them unused trashes them under
    a record younger than every such reader's lock. Only trash records whose packs are in
    no other index file cost anything: usually there are none.
    """
    records = list_trash(repo)
    if not records or not snaps:
        return 0
    own_index = {n for rec in records for n in rec.index}
    sizes = repo.list_packs()
    try:
        live, _loaded = load_live_index(repo, skip=own_index)
    except IntegrityError:
        live = None  # cannot tell what is live: keep every trashed pack, to be safe
    trashed = [
        p
        for rec in records
        for p in rec.packs
        if p in sizes and (live is None or p not in live.packs)
    ]
    if not trashed:
        return 0
    headers = read_headers(repo, trashed, sizes, load_records(repo, own_index))
    wanted = list(headers.values())
    if live is not None:
        try:
            used = walk_snapshots(repo, index_view(live, wanted), snaps, NoProgress())
        except IntegrityError:
            pass  # a damaged or incomplete snapshot: keep every trashed pack, to be safe
        else:
            needed = {b for blobs in used.values() for b in blobs}
            wanted = [rec for rec in wanted if still_needed(rec, live, used, needed)]
    if wanted:
        repo.write_index(wanted)
    return len(wanted)
