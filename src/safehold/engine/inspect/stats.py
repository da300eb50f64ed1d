"""How big snapshots are, how much they store, and which chains they form.

Two measures, as in restic:

- **restore size**: what restoring the snapshots would write. Every file counts, a
  hard-linked file's size once per snapshot (a restore writes it once and links the rest).
- **raw data**: the unique blobs the snapshots reference (file content and trees), their
  plaintext size and their stored size (compressed and sealed, from the index).

Their quotients are the deduplication ratio (restore size / unique file content) and the
compression ratio (plaintext / stored). Identical subtrees, which most snapshots of one
source share, are measured once: restore sizes are remembered per subtree id and raw data
does not enter a subtree it has already seen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from safehold.ids import HexId, blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

RESTORE_SIZE = "restore-size"
RAW_DATA = "raw-data"
ALL = "all"
MODES = (RESTORE_SIZE, RAW_DATA, ALL)


@dataclass
class RestoreSize:
    """What restoring the snapshots would write: items by kind and file bytes."""

    snapshots: int = 0
    files: int = 0
    dirs: int = 0
    others: int = 0  # symlinks, FIFOs, devices, sockets
    bytes: int = 0


@dataclass
class RawData:
    """The distinct blobs the snapshots reference, their plaintext and stored bytes."""

    blobs: int = 0
    data_blobs: int = 0
    tree_blobs: int = 0
    raw_bytes: int = 0  # plaintext of every referenced blob
    data_raw_bytes: int = 0  # plaintext of file content only
    stored_bytes: int = 0  # as stored in packs: compressed and sealed
    missing_blobs: int = 0  # referenced but not in the index (see 'safehold check')


@dataclass
class RepoTotals:
    """The repository as a whole: snapshots, chains, packs and their stored bytes."""

    snapshots: int = 0
    chains: int = 0
    packs: int = 0
    pack_bytes: int = 0  # every pack in storage, referenced or not


@dataclass
class Stats:
    """The parts of ``stats`` that were asked for (None: not computed)."""

    restore_size: RestoreSize | None = None
    raw_data: RawData | None = None
    repository: RepoTotals | None = None

    @property
    def dedup_ratio(self) -> float | None:
        """File bytes a restore would write per plaintext byte stored, or None when not computed."""
        if self.restore_size is None or self.raw_data is None:
            return None
        if not self.raw_data.data_raw_bytes:
            return None
        return self.restore_size.bytes / self.raw_data.data_raw_bytes

    @property
    def compression_ratio(self) -> float | None:
        """Plaintext bytes per stored byte, or None when not computed."""
        if self.raw_data is None or not self.raw_data.stored_bytes:
            return None
        return self.raw_data.raw_bytes / self.raw_data.stored_bytes

    def to_json(self) -> dict[str, Any]:
        """The statistics as ``stats --json`` prints them."""
        return {
            "restore_size": asdict(self.restore_size) if self.restore_size else None,
            "raw_data": asdict(self.raw_data) if self.raw_data else None,
            "repository": asdict(self.repository) if self.repository else None,
            "dedup_ratio": self.dedup_ratio,
            "compression_ratio": self.compression_ratio,
        }


def compute_stats(
    repo: Repository, snaps: list[Snapshot], *, mode: str = ALL, whole_repository: bool = False
) -> Stats:
    """Measure ``snaps``; with ``whole_repository`` add the totals of the repository
    (``snaps`` should then be every snapshot). The index must be loaded for raw data."""
    if mode not in MODES:
        raise ValueError(f"unknown stats mode {mode!r}")
    out = Stats()
    if mode in (RESTORE_SIZE, ALL):
        out.restore_size = restore_size(repo, snaps)
    if mode in (RAW_DATA, ALL):
        out.raw_data = raw_data(repo, snaps)
    if whole_repository:
        packs = repo.list_packs()
        out.repository = RepoTotals(
            snapshots=len(snaps),
            chains=len({s.chain for s in snaps}),
            packs=len(packs),
            pack_bytes=sum(packs.values()),
        )
    return out


# --- restore size --------------------------------------------------------------------------


@dataclass
class _TreeSize:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes: int = 0  # files that are not hard-linked
    linked: dict[tuple[int, int], int] = field(default_factory=dict)  # (dev, inode) -> size


def restore_size(repo: Repository, snaps: list[Snapshot]) -> RestoreSize:
    """What restoring ``snaps`` would write; each tree is counted once however many snapshots
    share it, hard links once."""
    cache: dict[HexId, _TreeSize] = {}
    out = RestoreSize(snapshots=len(snaps))
    for snap in snaps:
        size = _tree_size(repo, snap.tree, cache)
        out.files += size.files
        out.dirs += size.dirs
        out.others += size.others
        out.bytes += size.bytes + sum(size.linked.values())
    return out


def _tree_size(repo: Repository, tree_id: HexId, cache: dict[HexId, _TreeSize]) -> _TreeSize:
    cached = cache.get(tree_id)
    if cached is not None:
        return cached
    size = _TreeSize()
    for node in repo.load_tree(tree_id):
        if node.type == t.FILE:
            size.files += 1
            if node.links > 1:
                size.linked[(node.dev, node.inode)] = node.size
            else:
                size.bytes += node.size
        elif node.type == t.DIR:
            size.dirs += 1
            if node.subtree:
                sub = _tree_size(repo, node.subtree, cache)
                size.files += sub.files
                size.dirs += sub.dirs
                size.others += sub.others
                size.bytes += sub.bytes
                size.linked.update(sub.linked)
        else:
            size.others += 1
    cache[tree_id] = size
    return size


# --- raw data ------------------------------------------------------------------------------


def referenced_blobs(repo: Repository, snaps: list[Snapshot]) -> tuple[set[str], set[str]]:
    """(tree blob ids, data blob ids), hex, that ``snaps`` reference."""
    trees: set[str] = set()
    data: set[str] = set()
    todo = [s.tree for s in snaps]
    while todo:
        tree_id = todo.pop()
        if tree_id in trees:
            continue
        trees.add(tree_id)
        for node in repo.load_tree(tree_id):
            if node.type == t.FILE:
                data.update(node.content)
            elif node.type == t.DIR and node.subtree and node.subtree not in trees:
                todo.append(node.subtree)
    return trees, data


def raw_data(repo: Repository, snaps: list[Snapshot]) -> RawData:
    """The distinct blobs ``snaps`` reference and what they take (plaintext, stored); those not
    in the index are counted as missing."""
    trees, data = referenced_blobs(repo, snaps)
    every = trees | data
    out = RawData(blobs=len(every), data_blobs=len(data), tree_blobs=len(trees))
    for hex_id in every:
        loc = repo.index.lookup(blob_from_hex(hex_id))
        if loc is None:
            out.missing_blobs += 1
            continue
        out.raw_bytes += loc.raw_length
        out.stored_bytes += loc.length
        if hex_id in data:
            out.data_raw_bytes += loc.raw_length
    return out


# --- chains --------------------------------------------------------------------------------


@dataclass
class ChainInfo:
    """One chain: its id, its snapshots in order, whether it was finished by hand."""

    id: HexId
    snapshots: list[Snapshot]  # in chain order: the full backup first
    finished: bool  # finished by hand: the next backup of its source starts a new chain

    @property
    def isolated(self) -> bool:
        """Whether the chain holds an isolated snapshot (an isolated chain has only that one)."""
        return any(s.isolated for s in self.snapshots)

    @property
    def status(self) -> str:
        """``finished``, ``isolated`` or ``open`` (a later backup may still join it)."""
        if self.finished:
            return "finished"
        return "isolated" if self.isolated else "open"


def list_chains(snaps: list[Snapshot], finished: set[HexId]) -> list[ChainInfo]:
    """Group snapshots by chain, oldest chain first. ``finished``: Repository.finished_chains().

    A chain whose snapshots were all forgotten is not listed, even if it was finished."""
    by_chain: dict[HexId, list[Snapshot]] = {}
    for s in snaps:
        by_chain.setdefault(s.chain, []).append(s)
    chains = [
        ChainInfo(cid, sorted(members, key=lambda s: (s.chain_seq, s.time, s.id)), cid in finished)
        for cid, members in by_chain.items()
    ]
    chains.sort(key=lambda c: (min(s.time for s in c.snapshots), c.id))
    return chains
