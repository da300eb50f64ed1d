"""The copy use case: snapshots from one repository into another, re-encrypted.

Two repositories share no keys, so the same content has different blob ids in each (ids
are keyed BLAKE3 under each repository's ident key). Every blob is therefore opened and
verified in the source and sealed anew in the destination, and every tree, which names
its contents and subtrees by id, is rewritten bottom-up with the translated ids. Chain ids
are kept: a copied chain deduplicates inside itself in the destination as it did in the
source, and ``chain_seq``/``isolated`` keep their meaning.

Per snapshot the write order is the backup's: packs -> index -> snapshot, so an interrupted
copy leaves nothing a reader can see, and the next run adopts the packs it left. A copy
records where it came from in the snapshot field ``original``; a source snapshot whose id
(or ``original``) is already in the destination is skipped, so copy is idempotent and
resumable. Each copied snapshot is verified structurally right after it is written (every
tree loads from the destination, every blob is in its index, in its chain); a copy that
fails verification is deleted again, so it is retried by the next run instead of skipped.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.errors import FormatError, IntegrityError, SafeholdError
from safehold.ids import (
    NO_SNAPSHOT,
    BlobId,
    ChainId,
    HexId,
    SnapshotId,
    blob_from_hex,
    chain_from_hex,
    to_hex,
)
from safehold.repository import tree as t
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import writer_view

__all__ = ["COPIED", "FAILED", "SKIPPED", "CopyOptions", "CopyResult", "copy_snapshots"]

COPIED = "copied"
SKIPPED = "skipped"
FAILED = "failed"

# A damaged snapshot can have millions of missing blobs; the report keeps the first few.
MAX_PROBLEMS = 20


@dataclass(kw_only=True)
class CopyOptions:
    """How a copy runs: how many blobs are loaded and sealed at once."""

    threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))


@dataclass
class CopyResult:
    """What became of one snapshot: copied (verified), skipped (already there) or failed, and
    what the copy added to the destination."""

    source: Snapshot
    status: str  # COPIED (written and verified), SKIPPED (already there) or FAILED
    target: SnapshotId = NO_SNAPSHOT  # the destination's copy (for SKIPPED: the existing one)
    blobs_new: int = 0
    data_added: int = 0  # plaintext bytes of blobs new to the destination
    data_added_stored: int = 0  # their sealed size
    problems: list[str] = field(default_factory=list)  # why it FAILED

    @property
    def ok(self) -> bool:
        """Whether the destination has the snapshot (copied or already there)."""
        return self.status != FAILED


def _blob_id(text: str, tree_id: str) -> BlobId:
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError) as exc:
        raise FormatError(f"tree {tree_id[:8]} names an invalid id {text!r}") from exc
    if len(raw) != 32:
        raise FormatError(f"tree {tree_id[:8]} names an invalid id {text!r}")
    return BlobId(raw)


def _content(node: dict[str, Any], tree_id: str) -> list[str]:
    ids = node.get("content") or []
    if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
        raise FormatError(f"tree {tree_id[:8]} has a node with invalid content")
    return ids


def copy_snapshots(
    src: Repository,
    dst: Repository,
    snapshots: Iterable[Snapshot],
    progress: Progress = NO_PROGRESS,
    *,
    opts: CopyOptions | None = None,
) -> list[CopyResult]:
    """Copy ``snapshots`` of ``src`` into ``dst``, oldest first; one result per snapshot.

    Damaged source data fails only the snapshot that needs it; other errors (storage,
    locks) end the run and propagate, after the current snapshot's packs are indexed.
    """
    opts = opts or CopyOptions()
    unique = {s.id: s for s in snapshots}
    ordered = sorted(unique.values(), key=lambda s: (s.time, s.id))
    with src.lock("copy"), dst.lock("copy"):
        # Snapshots chosen before the lock may have been forgotten (and their data pruned)
        # since; one that still exists now is safe to read until the lock is released.
        present = set(src.list_snapshot_ids())
        gone = [s for s in ordered if s.id not in present]
        ordered = [s for s in ordered if s.id in present]
        src.load_index()
        trashed = writer_view(dst)  # dst's index without the packs prune has trashed
        # Packs an interrupted copy (or backup) left behind are reused, not uploaded again.
        dst.index_unindexed_packs(exclude=trashed)
        copier = _Copier(src, dst, opts, progress)
        results = [copier.copy(s) for s in ordered]
    forgotten = "it was forgotten before the copy began: nothing to copy"
    return [CopyResult(s, SKIPPED, problems=[forgotten]) for s in gone] + results


@dataclass
class _Job:
    """One snapshot being copied: its chain, its saver, the blobs its saver holds."""

    chain: ChainId
    saver: BlobSaver
    pool: ThreadPoolExecutor
    # Destination ids this saver stored or found pending: not yet in the index, but safe
    # to reference because finish() makes them durable before the snapshot is written.
    staged: set[BlobId] = field(default_factory=set)


class _Copier:
    def __init__(
        self, src: Repository, dst: Repository, opts: CopyOptions, progress: Progress
    ) -> None:
        self.src = src
        self.dst = dst
        self.opts = opts
        self.progress = progress
        # Source blob id -> destination blob id. Both depend on the content only, so the
        # mapping holds across chains; whether the destination chain has the blob is asked
        # of the index each time (a crash of one snapshot must not leave a false "done").
        self._ids: dict[BlobId, BlobId] = {}
        self._ids_lock = threading.Lock()
        # (chain, destination tree id) already verified in this run: shared subtrees of
        # later snapshots are not walked again.
        self._verified: set[tuple[ChainId, HexId]] = set()
        # Destination snapshot id by the identity of what it is a copy of.
        self._present: dict[SnapshotId, SnapshotId] = {}
        for s in dst.list_snapshots():
            self._present[s.id] = s.id
            if s.original:
                self._present.setdefault(s.original, s.id)
        self._src_finished = src.finished_chains()
        self._dst_finished = dst.finished_chains()

    # --- one snapshot ----------------------------------------------------------------------

    def copy(self, snap: Snapshot) -> CopyResult:
        identity = snap.original or snap.id
        existing = self._present.get(snap.id) or self._present.get(identity)
        if existing:
            return CopyResult(snap, SKIPPED, target=existing)
        chain = chain_from_hex(snap.chain)
        saver = BlobSaver(self.dst, chain)
        self.progress.start("copy", 0, int(snap.summary.get("total_bytes", 0) or 0))
        try:
            with ThreadPoolExecutor(self.opts.threads, thread_name_prefix="copy") as pool:
                job = _Job(chain, saver, pool)
                try:
                    root = self._tree(job, snap.tree)
                finally:
                    # On failure: no worker may still be saving when finish() runs.
                    pool.shutdown(wait=True, cancel_futures=True)
            saver.finish()
        except IntegrityError as exc:
            # Damaged source data: this snapshot cannot be copied, others may be.
            # What was uploaded is indexed so the next attempt reuses it.
            try:
                saver.finish()
            except BaseException:
                saver.abort()
                raise
            self.progress.finish()
            return CopyResult(snap, FAILED, problems=[f"reading the source: {exc}"])
        except BaseException:
            try:
                saver.finish()
            except BaseException:
                saver.abort()
            self.progress.finish()
            raise
        self.progress.finish()

        copy = dataclasses.replace(
            snap,
            tree=root,
            tags=list(snap.tags),
            paths=list(snap.paths),
            parent=self._present.get(snap.parent, NO_SNAPSHOT) if snap.parent else NO_SNAPSHOT,
            summary=dict(snap.summary),
            errors=[dict(e) for e in snap.errors],
            original=identity,
            id=NO_SNAPSHOT,
        )
        target = self.dst.save_snapshot(copy)
        result = CopyResult(
            snap,
            COPIED,
            target=target,
            blobs_new=saver.stats.blobs_new,
            data_added=saver.stats.bytes_new_raw,
            data_added_stored=saver.stats.bytes_new_stored,
        )
        problems = self._verify(target, root, chain)
        if problems:
            # An unverified copy must not stay: it would be skipped, never repaired.
            self.dst.delete_snapshot(target)
            result.status = FAILED
            result.target = NO_SNAPSHOT
            result.problems = problems
            return result
        self._present[snap.id] = target
        self._present.setdefault(identity, target)
        if snap.chain in self._src_finished and snap.chain not in self._dst_finished:
            self.dst.finish_chain(snap.chain)
            self._dst_finished.add(snap.chain)
        return result

    # --- translating blobs and trees -------------------------------------------------------

    def _known(self, job: _Job, src_id: BlobId) -> BlobId | None:
        """The destination id of ``src_id`` if the destination chain already holds it."""
        dst_id = self._ids.get(src_id)
        if dst_id is None:
            return None
        if dst_id in job.staged or self.dst.index.has_in_chain(dst_id, job.chain):
            return dst_id
        return None

    def _save(self, job: _Job, src_id: BlobId, blob_type: int, data: bytes) -> BlobId:
        dst_id, _ = job.saver.save(blob_type, data)
        with self._ids_lock:
            self._ids[src_id] = dst_id
            job.staged.add(dst_id)
        return dst_id

    def _data(self, job: _Job, src_id: BlobId) -> BlobId:
        known = self._known(job, src_id)
        if known is not None:
            return known
        data = self.src.load_blob(src_id)  # verified against its id while opened
        return self._save(job, src_id, BLOB_DATA, data)

    def _tree(self, job: _Job, tree_id: HexId) -> HexId:
        """Copy a tree and everything below it; returns the destination tree id.

        A tree is saved only after all it names was saved by the same saver or is already
        in the destination index, so a tree in the index implies a complete subtree.
        Nodes are copied as JSON objects with only ``content`` and ``subtree`` replaced,
        so every other field, including ones this version does not know, stays as stored.
        """
        src_id = _blob_id(tree_id, tree_id)
        known = self._known(job, src_id)
        if known is not None:
            return to_hex(known)
        nodes = self.src.load_tree_json(tree_id)
        contents = [_content(node, tree_id) for node in nodes]
        # Each distinct chunk once (a file may repeat one), loaded and sealed in parallel.
        todo = list(dict.fromkeys(_blob_id(c, tree_id) for ids in contents for c in ids))
        done = job.pool.map(lambda b: self._data(job, b), todo)
        translated = {s.hex(): d.hex() for s, d in zip(todo, done, strict=True)}
        out = []
        for node, ids in zip(nodes, contents, strict=True):
            new = dict(node)
            if ids:
                new["content"] = [translated[c] for c in ids]
            subtree = node.get("subtree")
            if subtree:
                new["subtree"] = self._tree(job, HexId(str(subtree)))
            if node.get("type") == t.FILE:
                self.progress.advance(1, int(node.get("size", 0)))
            out.append(new)
        return to_hex(self._save(job, src_id, BLOB_TREE, t.encode_tree_json(out)))

    # --- verifying the copy ----------------------------------------------------------------

    def _verify(self, snap_id: SnapshotId, root: HexId, chain: ChainId) -> list[str]:
        """Cheap structural check of a written copy: the snapshot and every tree load
        (decrypted and checked against their ids) from the destination, and every blob
        they name is in the destination index, in the snapshot's chain."""
        problems: list[str] = []
        missing = 0

        def problem(text: str) -> None:
            nonlocal missing
            if len(problems) < MAX_PROBLEMS:
                problems.append(text)
            else:
                missing += 1

        try:
            stored = self.dst.load_snapshot(snap_id)
        except SafeholdError as exc:
            return [f"the copied snapshot does not load: {exc}"]
        if stored.tree != root:
            return [f"the copied snapshot names tree {stored.tree[:8]}, not {root[:8]}"]
        seen: set[tuple[ChainId, HexId]] = set()
        stack = [(root, "/")]
        while stack:
            tree_id, path = stack.pop()
            if (chain, tree_id) in self._verified or (chain, tree_id) in seen:
                continue
            seen.add((chain, tree_id))
            if not self.dst.index.has_in_chain(blob_from_hex(tree_id), chain):
                problem(f"{path}: tree {tree_id[:8]} is not in the destination index")
                continue
            try:
                nodes = self.dst.load_tree(tree_id)
            except SafeholdError as exc:
                problem(f"{path}: tree {tree_id[:8]} does not load: {exc}")
                continue
            for node in nodes:
                node_path = path.rstrip("/") + "/" + node.name
                for c in node.content:
                    if not self.dst.index.has_in_chain(blob_from_hex(c), chain):
                        problem(f"{node_path}: blob {c[:8]} is not in the destination index")
                if node.subtree:
                    stack.append((node.subtree, node_path))
        if missing:
            problems.append(f"... and {missing} more problems")
        if not problems:
            # Only a wholly verified snapshot vouches for its trees: a tree is "verified"
            # only together with everything below it.
            self._verified |= seen
        return problems
