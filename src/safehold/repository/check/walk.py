"""The snapshot walk: every tree reachable from a snapshot, and every blob its trees name,
must be indexed, stored (and readable, when data was read) in a pack of the snapshot's own
chain. Problems are reported per snapshot and path."""

from __future__ import annotations

from safehold.errors import FormatError, IntegrityError, ObjectNotFound
from safehold.ids import BlobId, ChainId, SnapshotId, blob_from_hex, chain_from_hex
from safehold.repository import tree as t
from safehold.repository.check.report import CLEAN, ERROR, Found, Issue, why
from safehold.repository.check.state import CheckState
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import pack_name
from safehold.repository.snapshot import Snapshot

__all__ = ["TREE_CACHE", "SnapshotChecks"]

TREE_CACHE = 4096

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
        nodes: list[t.Node] = []
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
        for node in nodes:
            path = "/" + node.name
            if node.type == t.FILE:
                self.file(node, chain, path, found)
            elif node.type == t.DIR and node.subtree:
                try:
                    sub = blob_from_hex(node.subtree)
                except ValueError:
                    found.add(Issue(path, "tree-damaged", "the folder names an invalid tree id"))
                    continue
                found.extend(self.tree(sub, chain), path)
        self.memo[key] = found if found.total else CLEAN
        return found

    def file(self, node: t.Node, chain: ChainId, path: str, found: Found) -> None:
        """One issue per kind of problem per file: the first blob, and how many share it."""
        first: dict[str, Issue] = {}
        count: dict[str, int] = {}
        for hex_id in node.content:
            try:
                blob_id = blob_from_hex(hex_id)
            except ValueError:
                blob_id = BlobId(b"")
            if len(blob_id) != 32:
                msg = f"the file names an invalid blob id {hex_id!r}"
                found.add(Issue(path, "tree-damaged", msg))
                return
            self.blob_ids.add(blob_id)
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
        what = f"{_TYPE_NAMES[kind]} {blob_id.hex()[:8]}"
        loc = self.index.lookup(blob_id)
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
        if not self.index.has_in_chain(blob_id, chain):
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

    def load_tree(self, tree_id: BlobId) -> list[t.Node]:
        """A tree's nodes, read through the check's index (and unindexed packs), kept in a bounded
        cache."""
        nodes = self.trees.get(tree_id)
        if nodes is not None:
            self.trees.move_to_end(tree_id)
            return nodes
        loc = self.index.lookup(tree_id) or self.extra.lookup(tree_id)
        assert loc is not None  # blob_issues reported it as missing otherwise
        name = pack_name(loc.pack_id)
        sealed = self.repo.storage.get(name, loc.offset, loc.length)
        data = self.repo.open_blob(tree_id, sealed, loc.raw_length, name)
        nodes = t.decode_tree(data, f"tree {tree_id.hex()[:8]}")
        self.tree_ids.add(tree_id)
        self.trees[tree_id] = nodes
        if len(self.trees) > TREE_CACHE:
            self.trees.popitem(last=False)
        return nodes
