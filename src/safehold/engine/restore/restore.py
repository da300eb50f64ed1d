"""The restore use case: a snapshot (or parts of it) back into a folder.

Restore walks the snapshot's trees and plans: every folder is created, and every needed
blob is listed once under its pack with the places (file, offset) it goes. Every
PLAN_BATCH files (and at the end), what is planned is restored and its plan forgotten
before planning goes on: packs are processed in parallel, by threads or, for the command
line's large restores of
a local repository where the runtime allows forking, by worker processes
(:mod:`safehold.engine.restore.workers`, which explains why): each is read in a few
large ranged reads, every blob is opened and verified against its id
(:meth:`Repository.open_blob`), and written to every place it belongs
(:mod:`safehold.engine.restore.write`). A file is closed and gets its
metadata as soon as its last blob is written. Folders get their metadata last, since
creating their children changes their times.

A large blob (one that gets a direct write) is decrypted and decompressed straight into a
page-aligned buffer of the worker, at its file offset modulo the block size, and written to
disk from there: no plaintext object, and no copy into a staging buffer while holding the
interpreter lock (restore of the benchmark data 4.04 -> 3.82 s, 3 runs each).

Restoring many small files is bound by the work done per file and per blob while holding
the interpreter lock, so planning keeps trees as parsed JSON (no node objects, no tree
cache), each blob is looked up in the index once, and a file made of one blob (most of
them) is created, written, given its metadata and closed in one go, without a lock.

Nothing is written outside the target: names are checked when trees are decoded, and
everything is created relative to open folder descriptors, never through a link
(:mod:`safehold.engine.restore.folders` argues why). A tree that is damaged, missing or
hostile (a name that is not one path component, a name twice) is not restored at all: its
folder stays empty, the rest of the snapshot is restored, and the result lists it under
``damaged`` (the command line then exits 4).
"""

from __future__ import annotations

import contextlib
import heapq
import mmap
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from safehold import runtime
from safehold.direct_io import suits_direct_io
from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.engine.restore.folders import (
    Folder,
    SetAttrs,
    folder_budget,
    make_folder,
    make_writable,
    set_entry_meta,
    set_folder_meta,
)
from safehold.engine.restore.workers import run_forked, usable
from safehold.engine.restore.write import (
    DIRECT_ALIGN,
    DIRECT_MIN,
    BlobTargets,
    FileWriter,
    Meta,
    OpenFile,
    target_error,
)
from safehold.engine.tree_walk import Chosen, Selection, Where
from safehold.engine.xattrs import AttrSetter, Choice, NotSet
from safehold.errors import IntegrityError, ObjectNotFound, UsageError
from safehold.ids import BlobId, HexId, PackId, blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository, pack_name
from safehold.repository.snapshot import Snapshot
from safehold.storage.capabilities import fork_safe, read_into, read_span

# Two needed blobs closer than this are fetched in one ranged read...
MAX_GAP = 1024 * 1024
# ...of at most this many bytes (one blob may be larger), unless the storage prefers another
# size (storage.capabilities.read_span: a local folder reads 1 MiB at a time). It bounds what each
# worker holds; remote storage wants few, large reads (a round trip each). Two reads per
# default-size pack keep remote restores close to whole-pack reads.
MAX_SPAN = 8 * 1024 * 1024
# Decrypted blobs go into a buffer per worker, grown to the largest blob it met...
SCRATCH_MIN = 1024 * 1024
# ...up to this size; a larger blob (rare: chunks average 1 MiB) gets a buffer of its own.
# Each worker keeps three such buffers; with worker processes they add up.
KEEP_MAX = 4 * 1024 * 1024
# Blobs that get direct writes are opened into an aligned buffer instead (see _aligned).
ALIGNED_MIN = DIRECT_MIN + DIRECT_ALIGN
# Planning stops at this many files with content and restores them before it goes on: the
# plan costs about 840 bytes a file, and worker processes copy the pages of it they touch,
# so 200,000 small files planned at once peaked at 364 MiB (restic: 246) where batches of
# this size keep the plan near 40 MiB (docs/benchmarks.md "Session 18"). A blob needed
# by files of two batches is read once for each.
PLAN_BATCH = 50_000
# A pack's needed blobs are handed to workers in runs of at most this many (a ticket
# each): a pack of 20,000 small files is then shared between workers instead of being
# the last one's long tail, and a batch of a few packs still feeds every worker.
TICKET_BLOBS = 2_048

# A blob to restore: (offset in its pack, length, raw length, id, where it goes).
_Blob = tuple[int, int, int, BlobId, BlobTargets]

__all__ = [
    "MAX_GAP",
    "MAX_SPAN",
    "PLAN_BATCH",
    "RestoreOptions",
    "RestoreResult",
    "run_restore",
    "spans",
]


@dataclass(kw_only=True)
class RestoreOptions:
    """Where to restore, what to select, and how: threads or worker processes, direct writes,
    owners and attributes."""

    target: str
    # What to restore (engine/tree_walk.py's Selection; restic's patterns): all when empty.
    includes: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)
    iincludes: list[str] = field(default_factory=list)  # ignoring case
    iexcludes: list[str] = field(default_factory=list)
    # Threads when restoring without worker processes: one more than cores, as a direct
    # write waits for the disk and the spare thread uses the core meanwhile (benchmark
    # restore 4.25 -> 4.03 s with 3 on 2 cores, 3 runs each; 4 were no faster and held
    # 12 MiB more). Worker processes have workers.THREADS each.
    threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2) + 1)
    # Processes to share the packs out among (engine/restore/workers.py), each with threads of
    # its own, where the storage allows (storage.capabilities.fork_safe: the local folder)
    # and the entry point does (safehold.runtime.may_fork); 1: threads of this process only.
    processes: int = 1
    owner: bool = field(default_factory=lambda: os.geteuid() == 0)  # chown only as root
    overwrite: bool = True
    direct: bool = True  # large blobs written with direct I/O (write.py)
    xattrs: bool = True  # set the saved extended attributes (engine/xattrs.py)...
    acls: bool = True  # ...and ACLs


@dataclass
class RestoreResult:
    """What a restore wrote, and everything it could not (path, why)."""

    files: int = 0
    dirs: int = 0
    bytes: int = 0
    # (path, why) of everything not restored, ``damaged`` included
    errors: list[tuple[str, str]] = field(default_factory=list)
    # (folder, why) of folders whose tree is damaged, missing or hostile: left empty
    damaged: list[tuple[str, str]] = field(default_factory=list)
    # Extended attributes the kernel refused, by kind and reason (the data is complete).
    attrs_not_set: list[NotSet] = field(default_factory=list)
    # Sockets in the snapshot, not made again: a socket is made by the program that
    # listens on it, and holds nothing to restore.
    sockets: list[str] = field(default_factory=list)


def spans(blobs: list[_Blob], max_span: int = MAX_SPAN) -> list[tuple[int, int, list[_Blob]]]:
    """Group a pack's needed blobs (sorted by offset) into ranged reads:
    ``(start, end, blobs)``, joining neighbours less than MAX_GAP apart while the read
    stays within ``max_span``."""
    out = []
    i, n = 0, len(blobs)
    while i < n:
        start = blobs[i][0]
        end = start + blobs[i][1]
        j = i + 1
        while j < n:
            off, length = blobs[j][0], blobs[j][1]
            if off - end >= MAX_GAP or off + length - start > max_span:
                break
            end = off + length
            j += 1
        out.append((start, end, blobs[i:j]))
        i = j
    return out


def _setgid(fd: int) -> bool:
    return bool(os.fstat(fd).st_mode & stat.S_ISGID)


def _meta(d: dict[str, Any]) -> Meta:
    return (d.get("mode", 0), d.get("uid", 0), d.get("gid", 0), d.get("mtime", 0))


class _Restorer:
    def __init__(self, repo: Repository, opts: RestoreOptions, progress: Progress) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.result = RestoreResult()
        direct = opts.direct and suits_direct_io(opts.target)
        self.attrs = AttrSetter(Choice(xattrs=opts.xattrs, acls=opts.acls), privileged=opts.owner)
        self.writer = FileWriter(
            owner=opts.owner,
            overwrite=opts.overwrite,
            direct=direct,
            attrs=self.attrs if self.attrs.choice.any else None,
        )
        self.folder_attrs: dict[Folder, Any] = {}  # the ``xattrs`` of folders with any
        self.root: Folder | None = None
        self.dirs: list[tuple[Folder, Meta]] = []
        # Folders kept open (folders.py): at most ``budget``, those with most files
        # (a min-heap of (files, order, folder)); the others are opened again per use.
        self.budget = folder_budget()
        self.kept: list[tuple[int, int, Folder]] = []
        self.kept_order = 0
        self.hardlinks: dict[tuple[int, int], OpenFile] = {}
        # (folder, name, path, key) of the later paths of hard-linked files
        self.late_hardlinks: list[tuple[Folder, str, str, tuple[int, int]]] = []
        self.wanted: dict[BlobId, _Blob] = {}
        self.by_pack: dict[PackId, list[_Blob]] = {}
        self.multi: list[OpenFile] = []  # files of several blobs (closed on failure)
        self.local = threading.local()
        self.uid, self.gid = os.geteuid(), os.getegid()
        self.max_span = read_span(repo.storage, MAX_SPAN)
        self.empty = 0  # files without content, made while planning
        self.planned = 0  # files with content planned since the last batch was restored
        self.batch = PLAN_BATCH
        # What the progress bar is told in advance when planning is cut into batches (the
        # snapshot's total size for a whole restore): the totals are not known before the
        # last batch is planned.
        self.expected_bytes = 0
        self.started = False
        self.selection = Selection()  # --include/--exclude (engine/tree_walk.py)
        self.chosen = 0  # items the selection took, when it is active

    # --- planning --------------------------------------------------------------------------

    def open_root(self, target: str) -> Folder:
        """The target folder, kept open: everything is created relative to it."""
        self.root = Folder.top(target)
        return self.root

    # One function on purpose: it runs once per restored item, where a call per kind of
    # item costs time the restore target does not leave (ruff's branch cap waived).
    def plan(self, tree_id: HexId, folder: Folder, where: Where | None, setgid: bool) -> int:  # noqa: PLR0912
        """Plan the contents of ``folder`` (open while this runs); ``setgid``: it hands its
        group to what is created in it (so a new file's group is not the process's);
        ``where``: the folder's place in the selection, None when all of it is restored.
        Returns how many files (and hard links) are to be made in it."""
        try:
            # The nodes' JSON objects, read as tree.Node.from_json does: building Node
            # objects for tens of thousands of files was a good part of a restore's serial
            # time. Their names are checked (tree.check_names) as they are decoded.
            nodes = self.repo.load_tree_json(tree_id)
        except (IntegrityError, ObjectNotFound, ValueError, TypeError) as exc:
            self._damaged(folder, tree_id, exc)
            return 0
        fd = folder.fd
        files = 0
        dest = folder.path
        prefix = dest if dest.endswith("/") else dest + "/"
        sel = self.selection
        pick = sel.pick(where) if where is not None else None
        for d in nodes:
            name = d["name"]
            out = prefix + name
            typ = d.get("type")  # an unknown type (or none) is left out
            if where is not None:
                if typ == t.DIR:
                    chosen, enter, sub = sel.enter(where, name)
                    if enter:
                        self._plan_folder(folder, name, out, d, sel.below(sub, chosen), setgid)
                    continue
                if pick is not None and not pick(name):
                    continue
                self.chosen += 1
            if typ == t.FILE:
                self._plan_file(folder, name, out, d, setgid)
                files += 1
            elif typ == t.DIR:
                self._plan_folder(folder, name, out, d, None, setgid)
            elif typ == t.SYMLINK:
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
                    os.symlink(d.get("target", ""), name, dir_fd=fd)
                except ValueError as exc:  # a NUL in the target: no file system takes it
                    self._damaged_node(out, f"its symlink target is invalid ({exc})")
                    continue
                except OSError as exc:
                    raise target_error(out, exc) from exc
                self._entry_meta(fd, name, d, is_link=True, path=out)
            elif typ == t.FIFO:
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
                    os.mkfifo(name, d.get("mode", 0) & 0o7777, dir_fd=fd)
                except OSError as exc:
                    raise target_error(out, exc) from exc
                self._entry_meta(fd, name, d, is_link=False, path=out)
            elif typ in (t.CHARDEV, t.BLOCKDEV):
                kind = stat.S_IFCHR if typ == t.CHARDEV else stat.S_IFBLK
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
                    os.mknod(name, d.get("mode", 0) & 0o7777 | kind, d.get("rdev", 0), dir_fd=fd)
                except PermissionError as exc:
                    self.result.errors.append((out, f"cannot create device: {exc.strerror}"))
                    continue
                except OSError as exc:
                    raise target_error(out, exc) from exc
                self._entry_meta(fd, name, d, is_link=False, path=out)
            elif typ == t.SOCKET:
                self.result.sockets.append(out)
        return files

    def _plan_folder(
        self,
        parent: Folder,
        name: str,
        out: str,
        d: dict[str, Any],
        where: Where | Chosen | None,
        setgid: bool,
    ) -> None:
        """Make a folder and plan what it holds; ``where``: see :meth:`plan` (a Chosen
        when the selection took the folder itself)."""
        before = self.chosen
        if isinstance(where, Chosen):
            self.chosen += 1
            where = where.where
        try:
            fd, created = make_folder(name, parent.fd)
        except OSError as exc:
            raise target_error(out, exc) from exc
        folder = Folder(out, name, parent, fd)
        self.dirs.append((folder, _meta(d)))
        if "xattrs" in d:
            self.folder_attrs[folder] = d["xattrs"]
        if not created:
            try:
                make_writable(fd)  # (it gets its saved mode last)
            except OSError as exc:
                raise target_error(out, exc) from exc
        self.result.dirs += 1
        # A new folder takes the set-group-id bit of its parent.
        sub_setgid = setgid if created else _setgid(fd)
        subtree = d.get("subtree", "")
        files = self.plan(subtree, folder, where, sub_setgid) if subtree else 0
        if where is not None and self.chosen == before and created:
            self._drop(folder, parent)
            return
        self._keep(folder, files)

    def _drop(self, folder: Folder, parent: Folder) -> None:
        """A folder made only to look below it for what the selection takes, which holds
        none of it: made, so unmade (restic makes the folders above what it restores only;
        one that was there already stays, as it is)."""
        for i in range(len(self.dirs) - 1, -1, -1):
            if self.dirs[i][0] is folder:
                del self.dirs[i]
                break
        self.result.dirs -= 1
        folder.close()
        with contextlib.suppress(OSError):
            os.rmdir(folder.name, dir_fd=parent.fd)

    def _keep(self, folder: Folder, files: int) -> None:
        """Keep ``folder`` open if it is among the ``budget`` folders with the most files
        planned so far; close it, or the one it displaces (no worker runs yet)."""
        self.kept_order += 1
        entry = (files, self.kept_order, folder)
        if len(self.kept) < self.budget:
            heapq.heappush(self.kept, entry)
        elif self.kept and files > self.kept[0][0]:
            heapq.heapreplace(self.kept, entry)[2].close()
        else:
            folder.close()  # opened again when needed (Folder.open)

    def _entry_meta(
        self, fd: int, name: str, d: dict[str, Any], *, is_link: bool, path: str = ""
    ) -> None:
        # A symlink, FIFO or device: nothing restore does later changes its times.
        attrs = self._attr_setter(d["xattrs"], path or name) if "xattrs" in d else None
        with contextlib.suppress(OSError):
            set_entry_meta(fd, name, _meta(d), self.opts.owner, is_link=is_link, attrs=attrs)

    def _attr_setter(self, attrs: Any, path: str) -> SetAttrs | None:
        """What sets ``attrs`` (a node's ``xattrs``) on the item restored at ``path``."""
        if not self.attrs.choice.any:
            return None

        def set_attrs(target: int | str, follow: bool) -> None:
            self.attrs.set(target, attrs, path, follow=follow)

        return set_attrs

    def _damaged(self, folder: Folder, tree_id: object, exc: Exception) -> None:
        """The tree of ``folder`` cannot be restored: nothing of it is, the rest goes on."""
        if isinstance(exc, ObjectNotFound):
            why = f"its tree {str(tree_id)[:8]} is in a pack missing from the storage ({exc})"
        elif isinstance(exc, IntegrityError):
            why = exc.message
        else:
            why = f"the folder names an invalid tree id {tree_id!r}"
        self._damaged_node(folder.path, why)

    def _damaged_node(self, path: str, why: str) -> None:
        message = f"not restored: {why}"
        self.result.damaged.append((path, message))
        self.result.errors.append((path, message))

    def _plan_file(
        self, folder: Folder, name: str, out: str, d: dict[str, Any], setgid: bool
    ) -> None:
        error = d.get("error", "")
        if error:
            # Nothing was stored for it: writing zeros of its size would invent content.
            self.result.errors.append((out, f"not restored: unreadable at backup ({error})"))
            return
        key = None
        if d.get("links", 1) > 1:
            key = (d.get("dev", 0), d.get("inode", 0))
            if key in self.hardlinks:
                self.late_hardlinks.append((folder, name, out, key))
                return
        size = d.get("size", 0)
        content: list[str] = d.get("content", [])
        self.result.files += 1
        self.result.bytes += size
        meta = _meta(d)
        f = OpenFile(folder, name, meta, size, len(content), bool(d.get("sparse", False)))
        f.xattrs = d.get("xattrs")
        if key is not None:
            self.hardlinks[key] = f
        # Created by this process, the file has its user and group already.
        f.owned = meta[1] == self.uid and meta[2] == self.gid and not setgid
        if not content:
            self.writer.write_empty(f)
            self.empty += 1
            return
        wanted = self.wanted
        offset = 0
        for hex_id in content:
            blob_id = blob_from_hex(hex_id)
            blob = wanted.get(blob_id)
            if blob is None:
                loc = self.repo.locate(blob_id)
                if loc is None:
                    raise IntegrityError(
                        f"{out}: blob {hex_id[:8]} is missing from the index",
                        hint="run 'safehold repair index' and 'safehold check'",
                    )
                blob = wanted[blob_id] = (loc.offset, loc.length, loc.raw_length, blob_id, [])
                packed = self.by_pack.get(loc.pack_id)
                if packed is None:
                    packed = self.by_pack[loc.pack_id] = []
                packed.append(blob)
            blob[4].append((f, offset))
            offset += blob[2]
        # Without a truncate, the last write sets the size; a sparse file needs it for a
        # hole at its end, and a size that disagrees with the content is kept as it was.
        f.truncate = f.sparse or offset != size
        if len(content) > 1:
            f.make_shared()
            self.multi.append(f)
        self.planned += 1
        if self.planned >= self.batch:
            self.restore_planned(last=False)

    # --- writing ---------------------------------------------------------------------------

    def _buffer(self, kind: str, size: int, minimum: int) -> bytearray:
        """This worker's reused buffer of ``kind`` ("reads": ranged reads, "scratch":
        decrypted blobs), at least ``size`` bytes. Reuse means no fresh memory is touched
        (page-faulted) per read or blob."""
        buf: bytearray | None = getattr(self.local, kind, None)
        if buf is None or len(buf) < size:
            if size > KEEP_MAX:
                return bytearray(size)
            # Views of an older buffer may still be alive: make a new one, never resize.
            buf = bytearray(max(size, minimum))
            setattr(self.local, kind, buf)
        return buf

    def _aligned(self, size: int) -> memoryview:
        """This worker's page-aligned buffer of at least ``size`` bytes, for large blobs:
        one placed in it at its file offset modulo ALIGN is written directly from there
        (no copy into a staging buffer, which holds the interpreter lock)."""
        buf: mmap.mmap | None = getattr(self.local, "aligned", None)
        if buf is None or len(buf) < size:
            # Anonymous mappings start on a page boundary; an older one may still be viewed.
            if size > KEEP_MAX:
                return memoryview(mmap.mmap(-1, size))
            buf = self.local.aligned = mmap.mmap(-1, max(size, SCRATCH_MIN))
        return memoryview(buf)

    def _do_pack(self, pack_id: PackId, blobs: list[_Blob]) -> None:
        name = pack_name(pack_id)
        storage = self.repo.storage
        open_blob = self.repo.open_blob_into
        open_exact = self.repo.open_blob_exact
        put = self.writer.put
        writer = self.writer
        advance = self.progress.advance
        buffer = self._buffer
        max_span = self.max_span
        groups = spans(blobs, max_span)
        for i, (start, end, group) in enumerate(groups):
            span = memoryview(buffer("reads", end - start, max_span))[: end - start]
            try:
                read_into(storage, name, start, span)
            except ObjectNotFound:
                # Swept by a prune after this restore planned (a live copy was written
                # since): the blobs still to write are read from where the index says they
                # are now. With no other copy, that is damage (exit 4), named by
                # Repository.relocate.
                del span
                self._relocated(pack_id, [b for _s, _e, g in groups[i:] for b in g])
                break
            files = nbytes = 0
            for off, length, raw_len, blob_id, targets in group:
                sealed = span[off - start : off - start + length]
                scratch = buffer("scratch", length, SCRATCH_MIN)
                f, offset = targets[0]
                if raw_len >= ALIGNED_MIN and writer.direct and not f.sparse:
                    # Opened straight into place for a direct write of its first target.
                    shift = offset % DIRECT_ALIGN
                    out = self._aligned(shift + raw_len)[shift : shift + raw_len]
                    data: bytes | memoryview = open_exact(blob_id, sealed, name, scratch, out)
                    files += put(f, data, offset, aligned=True)
                    for f, offset in targets[1:]:
                        files += put(f, data, offset)
                    nbytes += raw_len * len(targets)
                    continue
                data = open_blob(blob_id, sealed, raw_len, name, scratch)
                if len(data) != raw_len:
                    # Offsets in files come from the index's raw lengths.
                    raise IntegrityError(
                        f"blob {blob_id.hex()[:8]} in {name} has {len(data)} bytes, "
                        f"the index says {raw_len}",
                        hint="run 'safehold repair index' and 'safehold check'",
                    )
                for f, offset in targets:
                    files += put(f, data, offset)
                nbytes += raw_len * len(targets)
            del span, sealed, data
            advance(files, nbytes)
        blobs.clear()  # lets finished files go

    def _relocated(self, pack_id: PackId, blobs: list[_Blob]) -> None:
        """The blobs of a pack that is gone, each read from its other copy (slow: rare)."""
        for _off, _length, raw_len, blob_id, targets in blobs:
            self.repo.relocate(blob_id, pack_id)
            data = self.repo.load_blob(blob_id)
            files = sum(self.writer.put(f, data, offset) for f, offset in targets)
            self.progress.advance(files, raw_len * len(targets))

    def tickets(self) -> list[tuple[PackId, list[_Blob]]]:
        """The planned blobs as work for the workers, and the plan emptied: each pack's
        blobs by offset, in runs of at most TICKET_BLOBS, the largest runs first."""
        work: list[tuple[PackId, list[_Blob]]] = []
        for pack_id, blobs in self.by_pack.items():
            blobs.sort(key=lambda b: b[0])
            if len(blobs) <= TICKET_BLOBS:
                work.append((pack_id, blobs))
                continue
            # Runs of equal length, give or take one (no short last one).
            n = len(blobs)
            runs = -(-n // TICKET_BLOBS)
            cuts = [n * k // runs for k in range(runs + 1)]
            work.extend((pack_id, blobs[a:b]) for a, b in pairwise(cuts))
        work.sort(key=lambda kv: -len(kv[1]))
        self.by_pack = {}
        self.wanted.clear()  # the tickets hold the blobs now
        return work

    def restore_planned(self, last: bool) -> None:
        """Restore the files planned so far and forget their plan: a batch while planning
        goes on, or (``last``) what planning left."""
        work = self.tickets()
        if not self.started:
            self.started = True
            if last:  # the whole plan in one go: its totals are known
                self.progress.start("restore", self.result.files, self.result.bytes)
            else:
                self.progress.start("restore", 0, self.expected_bytes)
        self.progress.advance(self.empty, 0)
        self.empty = self.planned = 0
        forking = runtime.may_fork() and usable(self.opts.processes, len(work))
        if forking and fork_safe(self.repo.storage):
            self._run_forked(work)
        else:
            self._run_threads(work)
        self.multi = []

    def run(self) -> None:
        """Restore what planning left (or all of it), then the hard links and the
        folders' metadata."""
        self.restore_planned(last=True)
        for folder, name, out, key in self.late_hardlinks:
            self._link(self.hardlinks[key], folder, name, out)
        owner = self.opts.owner
        for folder, meta in reversed(self.dirs):
            attrs = self.folder_attrs.get(folder)
            setter = None if attrs is None else self._attr_setter(attrs, folder.path)
            try:
                with folder.descriptor() as fd:
                    set_folder_meta(fd, meta, owner, attrs=setter)
            except OSError as exc:
                raise target_error(folder.path, exc) from exc
        self.result.attrs_not_set = self.attrs.failures()
        self.progress.finish()

    def _link(self, first: OpenFile, folder: Folder, name: str, out: str) -> None:
        """``out`` as a hard link to ``first``, a file this restore made: both named in
        their folders' descriptors, and a link at ``first`` is linked as itself, never
        followed (linkat without AT_SYMLINK_FOLLOW)."""
        try:
            with first.folder.descriptor() as src, folder.descriptor() as dst:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dst)
                os.link(first.name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
        except OSError as exc:
            raise target_error(out, exc) from exc

    def _run_threads(self, wanted: list[tuple[PackId, list[_Blob]]]) -> None:
        with ThreadPoolExecutor(self.opts.threads, thread_name_prefix="restore") as pool:
            futures = [pool.submit(self._do_pack, p, b) for p, b in wanted]
            try:
                for fut in futures:
                    fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise

    def _run_forked(self, wanted: list[tuple[PackId, list[_Blob]]]) -> None:
        for f in self.multi:  # several blobs, maybe in several processes: made here
            self.writer.create(f)

        def child_setup(progress: Progress) -> None:
            self.progress = progress  # a child reports through its pipe
            self.attrs.reset()  # and sends what it could not set when done

        def child_notes() -> list[dict[str, Any]]:
            return [n.to_json() for n in self.attrs.failures()]

        self.writer.shared = True
        try:
            run_forked(
                self._do_pack,
                wanted,
                self.opts.processes,
                self.progress,
                child_setup,
                child_notes=child_notes,
                on_notes=self.attrs.merge,
            )
        finally:
            self.writer.shared = False
        finished = sum(self.writer.finish_created(f) for f in self.multi)
        self.progress.advance(finished, 0)

    def close_all(self) -> None:
        """After a failure: close the files still open (a service process lives on)."""
        for f in self.multi:
            self.writer.abandon(f)

    def close_folders(self) -> None:
        """Once every worker is done (or after a failure): the folders kept open."""
        for folder, _meta in self.dirs:
            folder.close()
        if self.root is not None:
            self.root.close()


def run_restore(
    repo: Repository, snap: Snapshot, opts: RestoreOptions, progress: Progress = NO_PROGRESS
) -> RestoreResult:
    """Restore ``snap`` (as ``opts`` selects) into ``opts.target``, under a shared lock.

    Raises :class:`UsageError` if the target is not a folder, :class:`TargetError` when it
    cannot be written; items that cannot be restored are listed in the result."""
    selection = selection_of(opts)
    target = os.path.abspath(opts.target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"restore target {target} exists and is not a folder")
    with repo.lock("restore"):
        repo.confirm_snapshot(snap)  # found before the lock: maybe forgotten since
        if not repo.index_loaded:
            repo.load_index()
        r = _Restorer(repo, opts, progress)
        r.selection = selection
        if not selection.active:
            r.expected_bytes = int(snap.summary.get("total_bytes", 0) or 0)
        try:
            os.makedirs(target, exist_ok=True)
            root = r.open_root(target)
            r.plan(snap.tree, root, selection.root if selection.active else None, _setgid(root.fd))
            r.run()
        except OSError as exc:
            r.close_all()
            raise target_error(getattr(exc, "filename", None) or target, exc) from exc
        except BaseException:
            r.close_all()
            raise
        finally:
            r.close_folders()
    refuse_nothing_chosen(selection, snap, r.chosen)
    return r.result


def selection_of(opts: RestoreOptions) -> Selection:
    """The options' selection; UsageError for a malformed pattern."""
    return Selection(
        opts.includes, opts.excludes, iincludes=opts.iincludes, iexcludes=opts.iexcludes
    )


def refuse_nothing_chosen(selection: Selection, snap: Snapshot, chosen: int) -> None:
    """A selection that took nothing is a mistake to report (exit 2), not an empty
    restore to call a success."""
    if selection.active and not chosen:
        what = "matches" if not selection.lists[2] and not selection.lists[3] else "is left by"
        raise UsageError(
            f"nothing in snapshot {snap.short_id} {what} {selection.describe()}",
            hint=f"see 'safehold ls {snap.short_id}'; the patterns are restic's "
            "(safehold restore --help)",
        )
