"""The snapshot walk: every tree reachable from a snapshot, and every blob its trees name,
must be indexed, stored (and readable, when data was read) in a pack of the snapshot's own
chain. Problems are reported per snapshot and path.

Trees are walked as their JSON objects, keeping of each node only what the walk needs
(:data:`Entry`), and each blob is found in the index with one search that also tells
whether its chain holds it (``Index.locate``): :class:`~safehold.repository.tree.Node` for
every node and two searches a blob were 70 % of a check of 200,000 small files. A tree is
refused exactly as ``tree.decode_tree`` refuses it (:func:`_entries`).
"""

from __future__ import annotations

from typing import Any

from safehold.errors import FormatError, IntegrityError, ObjectNotFound
from safehold.ids import BlobId, ChainId, SnapshotId, blob_from_hex, chain_from_hex
from safehold.repository import tree as t
from safehold.repository.check.report import CLEAN, ERROR, Found, Issue, why
from safehold.repository.check.state import CheckState
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import pack_name
from safehold.repository.snapshot import Snapshot

__all__ = ["TREE_CACHE", "TREE_CACHE_NODES", "Entry", "SnapshotChecks"]

TREE_CACHE = 4096
# ...and at most this many nodes in them: a tree is walked once per chain (``memo``), so the
# cache only saves loading it again for another chain, while 4,096 trees of a maildir's
# 100 files each held 56 MB of the 152 MB a check of 200,000 files took. With one chain
# nothing is cached at all (the 65,536 nodes were still 23 MB of such a check's 100).
TREE_CACHE_NODES = 1 << 16

# What the walk keeps of a node: name, type, content (hex blob ids), subtree (hex tree id).
Entry = tuple[str, Any, Any, Any]

_BLOCKING = frozenset({"blob-missing", "pack-missing", "blob-damaged"})
_TYPE_NAMES = {BLOB_DATA: "data blob", BLOB_TREE: "tree"}

_LOST_HINT = (
    "restore this path from another snapshot or another copy of the repository; "
    "'safehold forget' snapshots that cannot be repaired"
)
_HINTS = {
    "blob-unindexed": "run 'safehold repair index'",
    "blob-missing": _LOST_HINT,
    "pack-missing": _LOST_HINT,
    "pack-size": _LOST_HINT,
    "blob-damaged": _LOST_HINT,
    "tree-damaged": _LOST_HINT,
    "blob-type": _LOST_HINT,
    "blob-other-chain": "keep the other chain's snapshots until this snapshot is forgotten; "
    "the next backup in this chain stores its own copy of changed files only",
}


class SnapshotChecks(CheckState):
    """The snapshot walk: every tree of every snapshot loaded once per chain, and every blob
    named checked against the index and the chain."""

    def check_snapshots(self, snap_ids: list[SnapshotId]) -> None:
        """Walk every snapshot of ``snap_ids`` (a forgotten one is skipped), with progress."""
        self.progress.start("check", len(snap_ids))
        # Snapshots are in the chains of the index's packs: with one, no tree is walked twice.
        self.cache_nodes = TREE_CACHE_NODES if self.index.chain_count() > 1 else 0
        try:
            for sid in snap_ids:
                try:
                    snap = self.repo.load_snapshot(sid)
                    chain, root = chain_from_hex(snap.chain), blob_from_hex(snap.tree)
                except ObjectNotFound:
                    continue  # forgotten while we worked
                except (IntegrityError, ValueError) as exc:
                    msg = f"the snapshot is damaged ({why(exc)}); its data cannot be found"
                    self.add(ERROR, "snapshot-damaged", f"snapshots/{sid}", msg, snapshot=sid)
                    continue
                self.report.snapshots += 1
                self.check_snapshot(snap, chain, root)
                self.progress.advance(1)
        finally:
            self.progress.finish()

    def check_snapshot(self, snap: Snapshot, chain: ChainId, root: BlobId) -> None:
        """Report what the walk of one snapshot's trees found, as problems of that snapshot."""
        found = self.tree(root, chain)
        for issue in found.items:
            path = issue.path or "/"
            self.add(
                ERROR,
                issue.code,
                f"snapshot {snap.short_id} {path}",
                issue.message,
                hint=_HINTS.get(issue.code, ""),
                pack=issue.pack.hex(),
                snapshot=snap.id,
                path=path,
            )
        if found.total > len(found.items):
            msg = f"{found.total - len(found.items)} more problems in this snapshot are not listed"
            self.add(ERROR, "more", f"snapshot {snap.short_id}", msg, snapshot=snap.id)

    def tree(self, tree_id: BlobId, chain: ChainId) -> Found:
        """Problems under one tree for a snapshot of ``chain``, each tree walked once per
        chain (the chain invariant depends on the chain; the rest does not)."""
        key = (tree_id, chain)
        memo = self.memo.get(key)
        if memo is not None:
            return memo
        found = Found()
        issues = self.blob_issues(tree_id, chain, BLOB_TREE)
        for issue in issues:
            found.add(issue)
        nodes: list[Entry] = []
        if not any(i.code in _BLOCKING for i in issues):
            try:
                nodes = self.load_tree(tree_id)
            except FormatError as exc:
                # The blob opened, so the repository's key sealed it: a client holding the
                # key wrote it so (a bug, or a hostile client: names that climb out of a
                # restore's target). Every reader refuses it.
                msg = (
                    f"the folder's tree is refused by every command: {exc.message} (it was "
                    "sealed with the repository's key: written by a faulty or compromised "
                    "client)"
                )
                found.add(Issue("", "tree-damaged", msg))
            except (IntegrityError, ObjectNotFound) as exc:
                msg = f"the folder's tree cannot be read: {exc.message}"
                found.add(Issue("", "tree-damaged", msg))
        for name, kind, content, subtree in nodes:
            path = "/" + name
            if kind == t.FILE:
                self.file(content, chain, path, found)
            elif kind == t.DIR and subtree:
                try:
                    sub = blob_from_hex(subtree)
                except ValueError:
                    found.add(Issue(path, "tree-damaged", "the folder names an invalid tree id"))
                    continue
                found.extend(self.tree(sub, chain), path)
        self.memo[key] = found if found.total else CLEAN
        return found

    def file(self, content: Any, chain: ChainId, path: str, found: Found) -> None:
        """One issue per kind of problem per file (``content``: its hex blob ids): the
        first blob, and how many share it."""
        first: dict[str, Issue] = {}
        count: dict[str, int] = {}
        for hex_id in content:
            try:
                blob_id = blob_from_hex(hex_id)
            except ValueError:
                blob_id = BlobId(b"")
            if len(blob_id) != 32:
                msg = f"the file names an invalid blob id {hex_id!r}"
                found.add(Issue(path, "tree-damaged", msg))
                return
            for issue in self.blob_issues(blob_id, chain, BLOB_DATA):
                first.setdefault(issue.code, issue)
                count[issue.code] = count.get(issue.code, 0) + 1
        for code, issue in first.items():
            more = count[code] - 1
            extra = f" (and {more} more blobs of this file)" if more else ""
            found.add(Issue(path, code, issue.message + extra, issue.pack))

    def blob_issues(self, blob_id: BlobId, chain: ChainId, kind: int) -> list[Issue]:
        """What is wrong with one blob a tree of ``chain`` names: missing, only in an unindexed
        pack, damaged, or stored in another chain."""
        # Data blobs are counted for the report: found ones as marks, one byte each.
        marks = self.blob_marks if kind == BLOB_DATA else None
        loc, in_chain = self.index.locate(blob_id, chain, marks)
        if kind == BLOB_DATA and (loc is None or marks is None):
            self.blob_ids.add(blob_id)
        if loc is not None and in_chain and loc.blob_type == kind:
            # The common case, before any message is formatted.
            pack = loc.pack_id
            if pack not in self.bad_packs and (blob_id, pack) not in self.bad_blobs:
                return []
        what = f"{_TYPE_NAMES[kind]} {blob_id.hex()[:8]}"
        if loc is None:
            other = self.extra.lookup(blob_id)
            if other is None:
                return [Issue("", "blob-missing", f"{what} is in no index and no pack: it is lost")]
            msg = (
                f"{what} is in no index; it is stored in pack {other.pack_id.hex()[:8]}, "
                "which 'safehold repair index' adds back"
            )
            self.needed_extra.add(other.pack_id)
            return [Issue("", "blob-unindexed", msg, other.pack_id)]
        pack = loc.pack_id
        short = pack.hex()[:8]
        out = []
        if loc.blob_type != kind:
            stored = _TYPE_NAMES.get(loc.blob_type, "blob of unknown type")
            out.append(Issue("", "blob-type", f"{what} is stored as a {stored}", pack))
        if not in_chain:
            msg = (
                f"{what} is stored only in packs of other chains (pack {short} of chain "
                f"{self.index.chain_of(pack).hex()[:8]}), not in this snapshot's chain "
                f"{chain.hex()[:8]}: the chain is not self-contained, and forgetting the "
                "other chain would lose it"
            )
            out.append(Issue("", "blob-other-chain", msg, pack))
        bad = self.bad_packs.get(pack)
        if bad is not None:
            out.append(Issue("", bad[0], f"{what} is in pack {short}, which {bad[1]}", pack))
        elif (blob_id, pack) in self.bad_blobs:
            out.append(Issue("", "blob-damaged", f"{what} in pack {short} is damaged", pack))
        return out

    def load_tree(self, tree_id: BlobId) -> list[Entry]:
        """A tree's entries, read through the check's index (and unindexed packs), kept in a
        bounded cache."""
        nodes = self.trees.get(tree_id)
        if nodes is not None:
            self.trees.move_to_end(tree_id)
            return nodes
        loc = self.index.lookup(tree_id) or self.extra.lookup(tree_id)
        assert loc is not None  # blob_issues reported it as missing otherwise
        name = pack_name(loc.pack_id)
        sealed = self.repo.storage.get(name, loc.offset, loc.length)
        data = self.repo.open_blob(tree_id, sealed, loc.raw_length, name)
        nodes = _entries(data, f"tree {tree_id.hex()[:8]}")
        self.tree_ids.add(tree_id)
        if not self.cache_nodes:
            return nodes
        self.trees[tree_id] = nodes
        self.cached_nodes += len(nodes)
        while len(self.trees) > TREE_CACHE or self.cached_nodes > self.cache_nodes:
            self.cached_nodes -= len(self.trees.popitem(last=False)[1])
        return nodes


def _entries(data: bytes, what: str) -> list[Entry]:
    """The walk's part of each node of a tree; FormatError for every tree that
    ``tree.decode_tree`` refuses (names as ``check_names``, a node without a type,
    extended attributes that are not valid, content that is not a list of ids)."""
    nodes = t.decode_tree_json(data, what)
    out: list[Entry] = []
    try:
        for n in nodes:
            if "type" not in n or "xattrs" in n or type(n.get("content", [])) is not list:
                t.Node.from_json(n)  # raises as decode_tree did, or takes what it took
                content: Any = list(n.get("content", ()))
            else:
                content = n.get("content", ())
            out.append((n["name"], n["type"], content, n.get("subtree", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{what} is not a valid tree: {exc}") from exc
    return out
