"""The backup use case: folders, files, standard input or a command's output -> snapshot.

Order of work (docs/architecture.md, "Backup pipeline"): lock, load the index (and adopt
packs an interrupted backup left behind), choose the parent and the chain, walk, read the
changed files in parallel (largest first, files of one chunk in walk order), save each
folder's tree once its files are read, write the index, then the snapshot. Until the
snapshot is written nothing is visible to readers, so a crash or a failed source leaves
the repository as it was, plus packs the next backup reuses.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from safehold import __version__, runtime
from safehold.engine import xattrs as xa
from safehold.engine.backup.file_reader import Counters, FileReader
from safehold.engine.backup.plan import DirPlan, Planner, build_tree, root_plan
from safehold.engine.backup.prescan import Prescan
from safehold.engine.backup.read_queue import HeldProgress, ReadQueue
from safehold.engine.backup.scan import CACHEDIR_TAG, Excluder
from safehold.engine.backup.vanished import Vanished
from safehold.engine.progress import NO_PROGRESS, Progress
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


@dataclass(kw_only=True)
class BackupOptions:
    paths: list[str] = field(default_factory=list)
    # What the walk leaves out, as restic's options of these names (engine/backup/scan.py).
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
        counters = Counters()
        errors: list[tuple[str, str]] = []
        # Every new blob adds an index record: not merged every 65,536 records while the
        # savers wait (the index kept for the cache gets its records only at the end).
        with repo.index.merges_deferred():
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
    counters: Counters,
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
    counters: Counters,
    errors: list[tuple[str, str]],
    progress: Progress,
    prescan: Prescan | None,
) -> str:
    """Back up ``paths``; returns the root tree id (hex)."""

    def save_tree(raw: bytes) -> str:
        return saver.save(BLOB_TREE, raw)[0].hex()

    held = HeldProgress(progress)
    vanished = Vanished()
    reader = FileReader(repo, saver, counters, errors, held, vanished)
    planner: Planner

    def read(job: tuple[str, t.Node, DirPlan]) -> None:
        path, node, folder = job
        reader.read((path, node))
        planner.file_read(folder)  # the folder's tree is saved after its last file

    # Files of one chunk (read whole, in FileReader._read_from) are read in walk order.
    small = repo.config.chunker.min_size
    with ReadQueue[tuple[str, t.Node, DirPlan]](read, opts.threads, small=small) as queue:
        planner = Planner(
            index=repo.index,
            chain=saver.chain_id,
            load_tree=repo.load_tree_json,
            excluder=excluder_for(opts, held.warn),
            one_file_system=opts.one_file_system,
            force=opts.force,
            save_tree=save_tree,
            # Read while the walk goes on.
            on_job=lambda path, node, folder: queue.put((path, node, folder), node.size),
            prescan=prescan,
            vanished=vanished,
            attrs=_attr_choice(opts),
            attrs_in_parent=parent is not None and parent.attrs == xa.kinds(_attr_choice(opts)),
        )
        progress.start("scan")
        root = root_plan(planner, parent.tree if parent else None)
        # The walk is pure Python and holds the interpreter lock while the readers wait
        # for it: a shorter switch interval during it, where the entry point allows one
        # (safehold.runtime, walk_switch_interval: measured there).
        with runtime.walk_switching():
            if paths == ["/"]:
                planner.walk("/", root, os.lstat("/").st_dev, t.Node(name="", type=t.DIR))
            else:
                for path in paths:
                    planner.place(root, path)
        progress.finish()
        errors.extend(planner.errors)
        for path, msg in planner.errors:
            progress.warn(path, msg)
        counters.files_new = planner.files_new
        counters.files_changed = planner.files_changed
        counters.files_unchanged = planner.files_unchanged
        counters.total_bytes = planner.bytes
        progress.start("backup", planner.files, planner.bytes)
        progress.advance(planner.files - planner.to_read, planner.bytes - planner.to_read_bytes)
        held.release()
    # Every file is read: only trees follow, so the data pack buffers can go now.
    saver.close_packs(BLOB_DATA)
    progress.finish()
    return build_tree(save_tree, root)


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SafeholdError) else f"{type(exc).__name__}: {exc}"
