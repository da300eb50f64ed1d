"""The backup use case: folders, files, standard input or a command's output -> snapshot.

Order of work (docs/architecture.md, "Backup pipeline"): lock, load the index (and adopt
packs an interrupted backup left behind), choose the parent and the chain, walk, read the
changed files in parallel (largest first), save trees bottom-up, write the index, then the
snapshot. Until the snapshot is written nothing is visible to readers, so a crash or a
failed source leaves the repository as it was, plus packs the next backup reuses.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from safehold import __version__
from safehold.engine import xattrs as xa
from safehold.engine.backup_plan import Planner, build_tree, root_plan
from safehold.engine.prescan import Prescan
from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.engine.read_queue import HeldProgress, ReadQueue
from safehold.engine.scan import CACHEDIR_TAG, Excluder
from safehold.engine.vanished import VANISHED, Vanished
from safehold.errors import SafeholdError, SourceError, SourceNotFound, UsageError
from safehold.repository import tree as t
from safehold.repository.chains import continues_chain, new_chain_id, next_chain_id
from safehold.repository.chunker import Chunker
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import writer_view
from safehold.sources.base import Stream
from safehold.sources.process import command_stream

WALK_SWITCH_INTERVAL = 0.0002  # seconds; see _backup_paths


@dataclass(kw_only=True)
class BackupOptions:
    paths: list[str] = field(default_factory=list)
    # What the walk leaves out, as restic's options of these names (engine/scan.py).
    excludes: list[str] = field(default_factory=list)
    iexcludes: list[str] = field(default_factory=list)  # patterns ignoring case
    exclude_if_present: list[str] = field(default_factory=list)  # NAME[:HEADER] tag files
    exclude_caches: bool = False  # folders holding a valid CACHEDIR.TAG
    exclude_larger_than: int | None = None  # bytes
    one_file_system: bool = False
    tags: list[str] = field(default_factory=list)
    host: str | None = None
    parent: str | None = None  # explicit parent snapshot id; default: latest of same source
    force: bool = False  # re-read files even if unchanged
    chain_length: int | None = None  # incrementals after a full before a new chain starts
    isolated: bool = False
    stdin_name: str | None = None  # back up one stream under this name
    stdin: BinaryIO | None = None
    command: list[str] | None = None  # back up this command's standard output
    streams: list[Stream] | None = None  # a stream source's output, one root file each
    source_kind: str | None = None  # recorded as snapshot.source (default: from the above)
    source_name: str | None = None  # a configured source's name: parent/chain follow it
    threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    xattrs: bool = True  # save extended attributes (engine/xattrs.py)...
    acls: bool = True  # ...and POSIX ACLs


@dataclass
class BackupResult:
    snapshot: Snapshot
    errors: list[tuple[str, str]]
    summary: dict[str, int | float]


@dataclass
class _Counters:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    bytes_read: int = 0
    total_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _resolve_paths(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        ap = os.path.normpath(os.path.abspath(p))
        if not os.path.lexists(ap):
            raise SourceNotFound(f"source path {p!r} does not exist", hint="check the path")
        out.append(ap)
    out = sorted(set(out))
    if "/" in out:
        return ["/"]
    # A path inside another one is already backed up with it.
    return [p for p in out if not any(p.startswith(q + "/") for q in out)]


def _source_key(opts: BackupOptions, paths: list[str]) -> list[str]:
    if opts.streams is not None:
        return ["/" + s.name for s in opts.streams]
    if opts.stdin_name:
        return ["/" + opts.stdin_name.lstrip("/")]
    return paths


def _stream_name(name: str) -> str:
    """The root file name of a stream: one path component (docs/format.md, "Trees")."""
    out = name.strip("/").replace("/", "_") or "stdin"
    if out in (".", "..") or "\0" in out:
        raise UsageError(
            f"{name!r} cannot be a file name in a snapshot", hint="give --stdin-name a file name"
        )
    return out


def _streams(opts: BackupOptions) -> list[Stream]:
    """The streams to save: a stream source's, or standard input / a command as one."""
    if opts.streams is not None:
        return opts.streams
    assert opts.stdin_name
    name = _stream_name(opts.stdin_name)
    if opts.command:
        argv = opts.command
        return [Stream(name, lambda: command_stream(argv, what=f"command {shlex.join(argv)}"))]
    stream = opts.stdin
    assert stream is not None
    return [Stream(name, lambda: nullcontext(stream))]


def _attr_choice(opts: BackupOptions) -> xa.Choice:
    return xa.Choice(xattrs=opts.xattrs, acls=opts.acls)


def _source_kind(opts: BackupOptions) -> str:
    if opts.source_kind:
        return opts.source_kind
    return "command" if opts.command else "stdin" if opts.stdin_name else "directory"


def excluder_for(opts: BackupOptions, warn: Callable[[str, str], None] | None = None) -> Excluder:
    """The walk's exclusions; UsageError for a malformed pattern or tag."""
    tags = [*opts.exclude_if_present, *([CACHEDIR_TAG] if opts.exclude_caches else [])]
    return Excluder(
        opts.excludes,
        ipatterns=opts.iexcludes,
        if_present=tags,
        max_size=opts.exclude_larger_than,
        warn=warn,
    )


def refuse_excluded_paths(paths: list[str], excluder: Excluder) -> None:
    """A backup path that the exclusions take out is a mistake to say, not an empty
    snapshot to save (restic saves one silently)."""
    for path in paths:
        why = excluder.excludes_root(path)
        if why is not None:
            raise UsageError(
                f"backup path {path} is excluded: {why}",
                hint="drop the pattern or option, or back up another path",
            )


def start_prescan(opts: BackupOptions) -> Prescan | None:
    """A started :class:`Prescan` of the folders ``opts`` backs up (None for streams), for
    the caller to run while it opens the repository, pass to :func:`run_backup` and close.
    A path that does not exist is left to run_backup to report."""
    if opts.streams is not None or opts.stdin_name or opts.command or not opts.paths:
        return None
    try:
        paths = _resolve_paths(opts.paths)
        excluder = excluder_for(opts)
    except SafeholdError:
        return None
    return Prescan(paths, excluder, opts.one_file_system).start()


def run_backup(
    repo: Repository,
    opts: BackupOptions,
    progress: Progress = NO_PROGRESS,
    *,
    prescan: Prescan | None = None,
) -> BackupResult:
    if opts.command and not opts.stdin_name:
        raise UsageError("--command needs --stdin-name NAME for the stream's file name")
    if opts.stdin_name and opts.paths:
        raise UsageError("give either paths or --stdin-name, not both")
    if opts.streams is not None:
        if opts.paths or opts.stdin_name:
            raise UsageError("a stream source takes no paths and no --stdin-name")
        names = [_stream_name(s.name) for s in opts.streams]
        if not names or len(set(names)) != len(names):
            raise UsageError(f"a stream source needs distinct stream names, got {names}")
    elif not opts.stdin_name and not opts.paths:
        raise UsageError("nothing to back up: give paths, --stdin-name or --command")
    if opts.chain_length is not None and opts.chain_length < 0:
        raise UsageError("--chain-length must be 0 or more")
    paths = _resolve_paths(opts.paths) if opts.paths else []
    if paths:
        refuse_excluded_paths(paths, excluder_for(opts, progress.warn))
    started = time.monotonic()
    host = opts.host or socket.gethostname()
    with repo.lock("backup"):
        trashed = writer_view(repo)  # the index without the packs prune has trashed
        repo.index_unindexed_packs(exclude=trashed)
        key = _source_key(opts, paths)
        parent, chain, seq = _choose_chain(repo, opts, host, key)
        saver = BlobSaver(repo, bytes.fromhex(chain))
        counters = _Counters()
        errors: list[tuple[str, str]] = []
        try:
            if opts.streams is not None or opts.stdin_name:
                nodes = [
                    _backup_stream(repo, saver, stream, opts.threads, counters, progress)
                    for stream in _streams(opts)
                ]
                nodes.sort(key=lambda n: n.name)  # trees are sorted by name
                root_id = saver.save(BLOB_TREE, t.encode_tree(nodes))[0].hex()
            else:
                root_id = _backup_paths(
                    repo, saver, opts, paths, parent, counters, errors, progress, prescan
                )
            saver.finish()
            repo.update_index_cache()  # the next command loads this backup's index files too
        except BaseException:
            # Keep what was uploaded findable: the next backup adopts these packs anyway,
            # but an index now saves it the work.
            try:
                saver.finish()
            except BaseException:
                saver.abort()
            raise
        summary: dict[str, int | float] = {
            "files_new": counters.files_new,
            "files_changed": counters.files_changed,
            "files_unchanged": counters.files_unchanged,
            "bytes_read": counters.bytes_read,
            "blobs_new": saver.stats.blobs_new,
            "data_added": saver.stats.bytes_new_raw,
            "data_added_stored": saver.stats.bytes_new_stored,
            "packs_written": saver.stats.packs,
            "total_bytes": counters.total_bytes,
            "duration_s": round(time.monotonic() - started, 3),
        }
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = ""
        snap = Snapshot(
            time=repo.clock.now(),
            tree=root_id,
            paths=key,
            hostname=host,
            username=user,
            tags=sorted(set(opts.tags)),
            parent=parent.id if parent else "",
            chain=chain,
            chain_seq=seq,
            isolated=opts.isolated,
            program_version=__version__,
            source=_source_kind(opts),
            source_name=opts.source_name or "",
            summary=summary,
            errors=[{"path": p, "error": m} for p, m in errors],
            attrs=xa.kinds(_attr_choice(opts)) if paths else [],
        )
        repo.save_snapshot(snap)
    return BackupResult(snap, errors, summary)


def _choose_chain(
    repo: Repository, opts: BackupOptions, host: str, key: list[str]
) -> tuple[Snapshot | None, str, int]:
    """Returns (parent whose unchanged files may be reused, chain id, position in chain)."""
    if opts.isolated:
        return None, new_chain_id(), 0
    snaps = repo.list_snapshots()
    if opts.parent:
        parent: Snapshot | None = repo.find_snapshot(opts.parent, snapshots=snaps)
    else:
        same = [
            s
            for s in snaps
            if s.hostname == host
            and not s.isolated
            and (
                s.source_name == opts.source_name
                if opts.source_name
                else (s.paths == key and not s.source_name)
            )
        ]
        parent = same[-1] if same else None
    finished = repo.finished_chains()
    if opts.source_name:  # a configured source keeps its chains whatever its streams are
        key = [f"source:{opts.source_name}"]
    if parent is None or not continues_chain(parent, finished, opts.chain_length):
        # A fresh full upload in a new chain: the source's first, or the one after the parent's.
        previous = "" if parent is None or parent.isolated else parent.chain
        chain = next_chain_id(repo.master, host=host, key=key, previous=previous, finished=finished)
        return None, chain, 0
    return parent, parent.chain, parent.chain_seq + 1


# --- streams -------------------------------------------------------------------------------


def _backup_stream(
    repo: Repository,
    saver: BlobSaver,
    stream: Stream,
    threads: int,
    counters: _Counters,
    progress: Progress,
) -> t.Node:
    """Save one stream as a file; its close raises SourceError if the producer failed."""
    now_ns = time.time_ns()
    node = t.Node(
        name=_stream_name(stream.name),
        type=t.FILE,
        mode=stream.mode,
        mtime_ns=now_ns,
        ctime_ns=now_ns,
    )
    node.uid, node.gid = os.getuid(), os.getgid()
    progress.start("backup")
    try:
        with stream.open() as reader:
            node.content, node.size = _save_stream(repo, saver, reader, threads, progress)
    except SourceError as exc:
        # On the first line: a failed tool's message goes on with its standard error.
        first, sep, rest = exc.message.partition("\n")
        raise SourceError(
            f"{first}; no snapshot was saved{sep}{rest}",
            hint=exc.hint
            or "fix the command or source; data it produced is kept and reused by the next backup",
        ) from exc
    counters.files_new += 1
    counters.bytes_read += node.size
    counters.total_bytes += node.size
    progress.finish()
    return node


def _save_stream(
    repo: Repository, saver: BlobSaver, stream: IO[bytes], threads: int, progress: Progress
) -> tuple[list[str], int]:
    """Chunk a stream in this thread and seal chunks in a pool, keeping their order.

    Never touches a temporary file: at most ``2 * threads`` chunks are in memory.
    """
    chunker = Chunker(repo.config.chunker)
    slots = threading.BoundedSemaphore(2 * threads)
    futures: list[Future[tuple[bytes, bool]]] = []
    total = 0

    def save(data: bytes) -> tuple[bytes, bool]:
        try:
            return saver.save(BLOB_DATA, data)
        finally:
            slots.release()

    with ThreadPoolExecutor(threads, thread_name_prefix="seal") as pool:
        buf = chunker.stream_buffer()
        for piece in chunker.cut_stream(stream.readinto, buf):  # type: ignore[attr-defined]
            slots.acquire()
            data = bytes(piece)  # the buffer is reused for the next chunk
            total += len(data)
            futures.append(pool.submit(save, data))
            progress.advance(0, len(data))
        ids = [f.result()[0].hex() for f in futures]
    return ids, total


# --- folders -------------------------------------------------------------------------------


def _backup_paths(
    repo: Repository,
    saver: BlobSaver,
    opts: BackupOptions,
    paths: list[str],
    parent: Snapshot | None,
    counters: _Counters,
    errors: list[tuple[str, str]],
    progress: Progress,
    prescan: Prescan | None,
) -> str:
    """Back up ``paths``; returns the root tree id (hex)."""

    def save_tree(raw: bytes) -> str:
        return saver.save(BLOB_TREE, raw)[0].hex()

    held = HeldProgress(progress)
    vanished = Vanished()
    reader = _FileReader(repo, saver, counters, errors, held, vanished)
    with ReadQueue[tuple[str, t.Node]](reader.read, opts.threads) as queue:
        planner = Planner(
            index=repo.index,
            chain=saver.chain_id,
            load_tree=repo.load_tree_json,
            excluder=excluder_for(opts, held.warn),
            one_file_system=opts.one_file_system,
            force=opts.force,
            save_tree=save_tree,
            on_job=lambda job: queue.put(job, job[1].size),  # read while the walk goes on
            prescan=prescan,
            vanished=vanished,
            attrs=_attr_choice(opts),
            attrs_in_parent=parent is not None and parent.attrs == xa.kinds(_attr_choice(opts)),
        )
        progress.start("scan")
        root = root_plan(planner, parent.tree if parent else None)
        # The walk is pure Python and holds the interpreter lock; the readers, already at
        # work, need it back after every read and hash and wait for the walk to hand it
        # over, which it does once per switch interval. A shorter one during the walk: 5 %
        # re-backup 1.325 -> 1.275 s (6 interleaved runs each); for the whole run it also
        # cost an initial backup 1-2 % (forced switches while readers run alone).
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, WALK_SWITCH_INTERVAL))
        try:
            if paths == ["/"]:
                planner.walk("/", root, os.lstat("/").st_dev, t.Node(name="", type=t.DIR))
            else:
                for path in paths:
                    planner.place(root, path)
        finally:
            sys.setswitchinterval(interval)
        progress.finish()
        errors.extend(planner.errors)
        for path, msg in planner.errors:
            progress.warn(path, msg)
        counters.files_new = planner.files_new
        counters.files_changed = planner.files_changed
        counters.files_unchanged = planner.files_unchanged
        counters.total_bytes = planner.bytes
        jobs = planner.jobs
        todo_bytes = sum(node.size for _, node in jobs)
        progress.start("backup", planner.files, planner.bytes)
        progress.advance(planner.files - len(jobs), planner.bytes - todo_bytes)
        held.release()
    # Every file is read: only trees follow, so the data pack buffers can go now.
    saver.close_packs(BLOB_DATA)
    progress.finish()
    return build_tree(save_tree, root)


# Recorded in the snapshot's errors (exit 3) for a file that changed while it was read,
# twice: its content is what was read, possibly torn, and restores as such.
CHANGED_WHILE_READ = "changed while read: stored as read"


class _FileReader:
    """Reads a file the walk found new or changed and saves its chunks.

    A file that changes while it is read would be stored torn (a prefix, or old and new
    parts mixed), so the open descriptor is stat-ed once after reading and compared with
    the walk's lstat (size, mtime, ctime), as borg and restic compare before and after:
    the walk's lstat is the "before", so that an unchanged file costs one fstat and a file
    reused from the parent nothing. A difference means the file changed after the walk,
    before it was opened or while it was read; it is then read once more through the same
    descriptor, between that fstat and another. If it changed again, what the second read
    got is stored and the file is named in the snapshot's errors (CHANGED_WHILE_READ) and
    warned about. The node keeps the walk's times either way, so the next backup reads the
    file again (its times differ by then) rather than trusting this content.
    """

    def __init__(
        self,
        repo: Repository,
        saver: BlobSaver,
        counters: _Counters,
        errors: list[tuple[str, str]],
        progress: Progress,
        vanished: Vanished,
    ) -> None:
        self.repo = repo
        self.saver = saver
        self.counters = counters
        self.errors = errors
        self.progress = progress
        self.vanished = vanished
        self._local = threading.local()

    def _state(self) -> _ReadState:
        st: _ReadState | None = getattr(self._local, "st", None)
        if st is None:
            st = self._local.st = _ReadState(Chunker(self.repo.config.chunker))
        return st

    def read(self, job: tuple[str, t.Node]) -> None:
        path, node = job
        try:
            content, size, changed = self._read(path, node)
        except OSError as exc:
            msg = exc.strerror or str(exc)
            node.error = msg
            node.content = []
            gone = self.vanished.folder_of(path, exc)
            if gone is None or gone[1]:
                where, why = (path, msg) if gone is None else (gone[0], VANISHED)
                with self.counters.lock:
                    self.errors.append((where, why))
                self.progress.warn(where, why)
            self.progress.advance(1, node.size)
            return
        node.content = content
        if size != node.size:
            # The file changed since the walk; record what we stored.
            self.progress.advance(0, size - node.size)
            node.size = size
        with self.counters.lock:
            self.counters.bytes_read += size
            if changed:
                self.errors.append((path, CHANGED_WHILE_READ))
        if changed:
            self.progress.warn(path, CHANGED_WHILE_READ)
        self.progress.advance(1, 0)

    def _read(self, path: str, node: t.Node) -> tuple[list[str], int, bool]:
        """The file's chunk ids and size, and whether it changed while read (see above)."""
        # os.open, not open(): FileIO stats every file it opens (to refuse a folder), so
        # the fstat after reading keeps the syscalls per file what they were. A folder put
        # in the file's place fails its first read instead (EISDIR).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ids, size = self._read_from(fd, node.size)
            after = os.fstat(fd)
            if (
                after.st_ctime_ns == node.ctime_ns
                and after.st_mtime_ns == node.mtime_ns
                and after.st_size == node.size
            ):
                return ids, size, False
            self.progress.advance(0, -size)  # counted again by the second read
            os.lseek(fd, 0, os.SEEK_SET)
            ids, size = self._read_from(fd, after.st_size)
            again = os.fstat(fd)
        finally:
            os.close(fd)
        changed = (
            again.st_ctime_ns != after.st_ctime_ns
            or again.st_mtime_ns != after.st_mtime_ns
            or again.st_size != after.st_size
        )
        return ids, size, changed

    def _read_from(self, fd: int, expected: int) -> tuple[list[str], int]:
        st = self._state()
        chunker = st.chunker
        save: Callable[[int, bytes | memoryview], tuple[bytes, bool]] = self.saver.save
        ids: list[str] = []
        total = 0
        if expected <= chunker.params.min_size:
            # One chunk: read it whole (it may have grown since the walk) into a buffer
            # of that size. Larger files come first, so let their window go.
            st.window = None
            view = st.small
            n = 0
            while n < len(view):
                got = os.readv(fd, (view[n:],))
                if not got:
                    break
                n += got
            if n <= chunker.params.min_size:
                if n:
                    ids.append(save(BLOB_DATA, view[:n])[0].hex())
                    self.progress.advance(0, n)
                return ids, n
            os.lseek(fd, 0, os.SEEK_SET)
        if st.window is None:
            st.window = chunker.stream_buffer()
        for piece in chunker.cut_stream(lambda view: os.readv(fd, (view,)), st.window):
            ids.append(save(BLOB_DATA, piece)[0].hex())
            total += len(piece)
            self.progress.advance(0, len(piece))
        return ids, total


class _ReadState:
    """One reader thread's chunker and buffers: a small one for files of one chunk, and a
    stream window for larger files, kept while they come and dropped at the first small
    file so that it does not stay resident for the rest of the backup."""

    __slots__ = ("chunker", "small", "window")

    def __init__(self, chunker: Chunker) -> None:
        self.chunker = chunker
        self.small = memoryview(bytearray(chunker.params.min_size + 1))
        self.window: memoryview | None = None


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SafeholdError) else f"{type(exc).__name__}: {exc}"
