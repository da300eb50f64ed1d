"""What the phases share: the snapshots, the live index (and a view with trashed packs),
pack headers, and the blobs each chain's snapshots use."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from safehold.errors import IntegrityError, ObjectNotFound, SafeholdError
from safehold.ids import BlobId, ChainId, HexId, PackId, SnapshotId, blob_from_hex, chain_from_hex
from safehold.repository import tree as t
from safehold.repository.format import T_INDEX
from safehold.repository.index import Index, PackRecord, decode_index
from safehold.repository.progress import NoProgress, ProgressSink
from safehold.repository.repository import Repository, pack_name
from safehold.repository.snapshot import Snapshot

__all__ = [
    "HEADER_THREADS",
    "UsedCache",
    "foreign_needed",
    "index_view",
    "list_snapshots",
    "load_live_index",
    "load_records",
    "read_headers",
    "used_blobs",
    "walk_snapshots",
]

HEADER_THREADS = 8


@dataclass(frozen=True)
class UsedCache:
    """Blob usage computed for a set of snapshots; valid for any subset of them, since
    snapshots never change (a forgotten snapshot only makes the cache conservative)."""

    snapshot_ids: frozenset[str]
    used: dict[ChainId, set[BlobId]]


def list_snapshots(repo: Repository) -> list[Snapshot]:
    """Every snapshot; prune does not go on past one it cannot read, since it would not
    know which data that snapshot needs."""
    damaged: list[SnapshotId] = []
    snaps = repo.list_snapshots(damaged=damaged)
    if damaged:
        names = ", ".join(f"snapshots/{sid}" for sid in sorted(damaged))
        raise IntegrityError(
            f"prune cannot read {names}, so it cannot tell which data that snapshot needs; "
            "it stopped before deleting anything",
            hint="put back an intact copy of it, or give it up with 'safehold forget ID' "
            "(it cannot be restored anyway), then prune again",
        )
    return snaps


def load_records(repo: Repository, names: Iterable[str]) -> dict[PackId, PackRecord]:
    """The pack records of the given index files (trash index files); files that are
    gone or damaged add nothing (callers read the pack headers instead)."""
    out: dict[PackId, PackRecord] = {}
    for name in sorted(names):
        try:
            records = decode_index(repo.load_object(name, T_INDEX), name)
        except (ObjectNotFound, IntegrityError):
            continue
        out.update((rec.pack_id, rec) for rec in records)
    return out


def load_live_index(repo: Repository, *, skip: set[str] | None = None) -> tuple[Index, list[str]]:
    """Load every index file but ``skip`` (trash records' own); returns the index and the
    names of the files it came from (prune deletes exactly these). Damaged files raise:
    prune does not guess."""
    index = Index()
    loaded = []
    for name in repo.list_index_files():
        if skip and name in skip:
            continue
        try:
            records = decode_index(repo.load_object(name, T_INDEX), name)
        except ObjectNotFound:
            continue
        except IntegrityError as exc:
            raise IntegrityError(
                f"{exc.message}; prune does not know which packs it listed, so it stopped "
                "before deleting anything",
                hint="run 'safehold repair index', then prune again",
            ) from exc
        for rec in records:
            index.add_pack(rec)
        loaded.append(name)
    repo.index = index
    repo.index_loaded = True
    return index, loaded


def index_view(live: Index, extra: Iterable[PackRecord]) -> Index:
    """The live index plus trashed packs, for reading trees that only trashed packs hold."""
    view = live.copy()  # shares the sorted run: no copy of the bulk
    for rec in extra:
        view.add_pack(rec)
    return view


def read_headers(
    repo: Repository,
    pack_ids: Iterable[PackId],
    sizes: dict[PackId, int],
    known: dict[PackId, PackRecord] | None,
) -> dict[PackId, PackRecord]:
    """Pack headers by id; packs whose header cannot be read are left out."""
    out: dict[PackId, PackRecord] = {}
    todo = []
    for p in pack_ids:
        if known and p in known:
            out[p] = known[p]
        else:
            todo.append(p)

    def read(pack_id: PackId) -> PackRecord | None:
        try:
            return repo.read_pack_header(pack_id, sizes[pack_id])
        except (SafeholdError, ValueError):
            return None

    with ThreadPoolExecutor(HEADER_THREADS, thread_name_prefix="pack-header") as pool:
        for rec in pool.map(read, todo):
            if rec is not None:
                out[rec.pack_id] = rec
    return out


def used_blobs(
    repo: Repository, view: Index, snaps: list[Snapshot], progress: ProgressSink | None = None
) -> dict[ChainId, set[BlobId]]:
    """Blob ids used by the snapshots of each chain: every tree reachable from their roots
    and every data blob those trees name. Raises if a snapshot needs a blob no pack holds."""
    progress = progress or NoProgress()
    progress.start("mark", len(snaps))
    try:
        return walk_snapshots(repo, view, snaps, progress)
    finally:
        progress.finish()


def walk_snapshots(
    repo: Repository, view: Index, snaps: list[Snapshot], progress: ProgressSink
) -> dict[ChainId, set[BlobId]]:
    """The blob ids each chain's snapshots use (trees and data), reading each tree once per
    chain from ``view``; raises :class:`IntegrityError` for a blob no pack holds."""
    used: dict[ChainId, set[BlobId]] = {}
    walked: dict[ChainId, set[HexId]] = {}
    for snap in snaps:
        chain = chain_from_hex(snap.chain)
        chain_used = used.setdefault(chain, set())
        chain_walked = walked.setdefault(chain, set())
        stack = [snap.tree]
        while stack:
            tree_id = stack.pop()
            if tree_id in chain_walked:
                continue
            chain_walked.add(tree_id)
            blob_id = blob_from_hex(tree_id)
            chain_used.add(blob_id)
            # Names are not checked: a hostile tree's blobs are kept like any other's
            # (check and restore refuse its names; prune only needs the ids it holds).
            raw = _read_blob(repo, view, blob_id, snap)
            nodes = t.decode_tree(raw, f"tree {tree_id[:8]}", check=False)
            for node in nodes:
                if node.subtree:
                    stack.append(node.subtree)
                for hex_id in node.content:
                    data_id = blob_from_hex(hex_id)
                    if data_id not in view:
                        raise _missing(data_id, snap)
                    chain_used.add(data_id)
        progress.advance(1)
    return used


def foreign_needed(live: Index, used: dict[ChainId, set[BlobId]]) -> set[BlobId]:
    """Blobs a chain uses but holds no copy of: they count as used wherever they are."""
    return {b for chain, blobs in used.items() for b in blobs if not live.has_in_chain(b, chain)}


def _read_blob(repo: Repository, view: Index, blob_id: BlobId, snap: Snapshot) -> bytes:
    loc = view.lookup(blob_id)
    if loc is None:
        raise _missing(blob_id, snap)
    name = pack_name(loc.pack_id)
    sealed = repo.storage.get(name, loc.offset, loc.length)
    return repo.open_blob(blob_id, sealed, loc.raw_length, name)


def _missing(blob_id: BlobId, snap: Snapshot) -> IntegrityError:
    return IntegrityError(
        f"snapshot {snap.short_id} needs blob {blob_id.hex()[:8]}, which no pack holds; "
        "prune stopped without deleting anything",
        hint="run 'safehold check' to see what is lost, then 'safehold repair index' (it "
        "finds copies an index lost); if that does not help, forget that snapshot",
    )
