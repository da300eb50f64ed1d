"""The backup use case: folders, files, standard input or a command's output -> snapshot.

Folders and files are walked and read here; streams are saved by ``stream.py``.

Order of work (docs/architecture.md, "Backup pipeline"): lock, load the index (and adopt
packs an interrupted backup left behind), choose the parent and the chain, walk, read the
changed files in parallel (largest first, files of one chunk in walk order), save each
folder's tree once its files are read, write the index, then the snapshot. Until the
snapshot is written nothing is visible to readers, so a crash or a failed source leaves
the repository as it was, plus packs the next backup reuses.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from safehold import __version__, runtime
from safehold.engine import xattrs as xa
from safehold.engine.backup.file_reader import Counters, FileReader
from safehold.engine.backup.plan import DirPlan, Planner, build_tree, root_plan
from safehold.engine.backup.prescan import Prescan
from safehold.engine.backup.read_queue import HeldProgress, ReadQueue
from safehold.engine.backup.scan import CACHEDIR_TAG, Excluder
from safehold.engine.backup.stream import backup_streams, one_stream, stream_name
from safehold.engine.backup.tiny_procs import Result, Sealer, TinyProcs
from safehold.engine.backup.vanished import Vanished
from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.errors import SafeholdError, SourceNotFound, UsageError
from safehold.ids import NO_SNAPSHOT, HexId, chain_from_hex, to_hex
from safehold.repository import tree as t
from safehold.repository.chains import continues_chain, new_chain_id, next_chain_id
from safehold.repository.format import BLOB_DATA, BLOB_TREE
from safehold.repository.repository import Repository
from safehold.repository.saver import BlobSaver
from safehold.repository.snapshot import Snapshot
from safehold.repository.trash import writer_view
from safehold.sources.base import Stream


@dataclass(kw_only=True)
class BackupOptions:
    """What to back up (paths, or one stream: standard input, a command, a stream source's
    streams) and how: excludes, parent and chain choice, tags, threads, attributes."""

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
    """The saved snapshot, the files that could not be read (path, why) and the run's counts."""

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


def _streams(opts: BackupOptions) -> list[Stream]:
    """The streams to save: a stream source's, or standard input / a command as one."""
    if opts.streams is not None:
        return opts.streams
    assert opts.stdin_name
    return [one_stream(opts.stdin_name, command=opts.command, stdin=opts.stdin)]


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


# Files this small cost more in interpreter-lock hand-overs than two readers gain by
# hashing and compressing them side by side: one reader takes them all. 16 KiB: the
# 200,000-file tree's mail (0.2-4.5 KB) and half the files of the 2 GiB benchmark tree
# (4.5 % of its bytes).
TINY_FILE = 16 * 1024
# Forked processes reading, hashing, compressing and sealing those tiny files, where the
# entry point allows forking (engine/backup/tiny_procs.py says why); 0: none. A backup
# without a parent snapshot reads every file, and one child (which also reads the files'
# extended attributes) was what a first backup of 200,000 small files waited for: the walk
# waited for room in the read queue 85 % of its time, the reader for room in the child's
# pipe. Two children took it from 9.35 s to 8.66 s (medians of 6 interleaved runs each,
# session 20). A re-backup sends them only the changed files: one is enough, and a second
# would only add its memory.
TINY_PROCS = 1
TINY_PROCS_FIRST = 2


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
    """Back up what ``opts`` names into a new snapshot of ``repo``, under a shared lock.

    Raises :class:`UsageError` for contradictory options, :class:`SourceError` when a stream's
    producer fails (then no snapshot is written); unreadable files are listed in the result
    instead. ``prescan``: one :func:`start_prescan` began before the repository was opened."""
    if opts.command and not opts.stdin_name:
        raise UsageError("--command needs --stdin-name NAME for the stream's file name")
    if opts.stdin_name and opts.paths:
        raise UsageError("give either paths or --stdin-name, not both")
    if opts.streams is not None:
        if opts.paths or opts.stdin_name:
            raise UsageError("a stream source takes no paths and no --stdin-name")
        names = [stream_name(s.name) for s in opts.streams]
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
        saver = BlobSaver(repo, chain_from_hex(chain))
        counters = Counters()
        errors: list[tuple[str, str]] = []
        # Every new blob adds an index record: not merged every 65,536 records while the
        # savers wait (the index kept for the cache gets its records only at the end).
        with repo.index.merges_deferred():
            try:
                if opts.streams is not None or opts.stdin_name:
                    root_id = backup_streams(
                        repo, saver, _streams(opts), opts.threads, counters, progress
                    )
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
            parent=parent.id if parent else NO_SNAPSHOT,
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
        # The repository's size after this backup, for the service's metrics and reports:
        # a fact about the repository, not about the backup, so kept out of the snapshot.
        summary = {**summary, "repository_packs_bytes": repo.index.packs_bytes()}
    return BackupResult(snap, errors, summary)


def _choose_chain(
    repo: Repository, opts: BackupOptions, host: str, key: list[str]
) -> tuple[Snapshot | None, HexId, int]:
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
) -> HexId:
    """Back up ``paths``; returns the root tree id."""

    def save_tree(raw: bytes) -> HexId:
        return to_hex(saver.save(BLOB_TREE, raw)[0])

    held = HeldProgress(progress)
    vanished = Vanished()
    reader = FileReader(repo, saver, counters, errors, held, vanished)
    planner: Planner

    def read(job: Job) -> None:
        path, node, folder = job
        reader.read((path, node))
        planner.file_read(folder)  # the folder's tree is saved after its last file

    def files_read(folders: Sequence[DirPlan]) -> None:
        planner.files_read(folders)

    # Files of one chunk (read whole, in FileReader._read_from) are read in walk order;
    # those of at most TINY_FILE bytes by one reader (engine/backup/read_queue.py says why),
    # which sends them to a forked process where that is allowed.
    small = repo.config.chunker.min_size
    tiny = _tiny_procs(repo, saver, reader, files_read, opts, first=parent is None)
    with (
        tiny if tiny is not None else contextlib.nullcontext(),
        ReadQueue[Job](
            read,
            opts.threads,
            small=small,
            tiny=TINY_FILE,
            read_tiny=tiny.submit if tiny is not None else None,
        ) as queue,
    ):
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
            # Exactly the files ReadQueue sends to the tiny-file child (size <= tiny).
            attrs_by_reader=TINY_FILE if tiny is not None and tiny.reads_attrs else -1,
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


# A file for the readers: its path, its node (which gets its content), its folder's plan.
Job = tuple[str, t.Node, DirPlan]


def _tiny_procs(
    repo: Repository,
    saver: BlobSaver,
    reader: FileReader,
    files_read: Callable[[Sequence[DirPlan]], None],
    opts: BackupOptions,
    *,
    first: bool,
) -> TinyProcs[Job] | None:
    """Forked readers of tiny files, or None where forking is not allowed (or one reader
    reads everything anyway). They read the files' extended attributes too. ``first``: no
    parent snapshot, so every file is read (:data:`TINY_PROCS_FIRST` of them)."""
    count = TINY_PROCS_FIRST if first else TINY_PROCS
    if count < 1 or opts.threads < 2 or not runtime.may_fork():
        return None
    choice = _attr_choice(opts)
    sealer = Sealer(
        repo.master.blob_id,
        repo.aead,
        saver.level,
        repo.config.chunker.min_size,
        attrs=choice if choice.any else None,
    )

    def describe(job: Job) -> tuple[str, int, int, int]:
        path, node, _folder = job
        return path, node.size, node.mtime_ns, node.ctime_ns

    def on_results(answers: list[tuple[Job, Result]]) -> None:
        reader.sealed_many([(path, node, res) for (path, node, _f), res in answers])
        files_read([folder for (_p, _n, folder), _res in answers])  # trees after last files

    return TinyProcs(sealer, describe, on_results, count)


def describe_error(exc: BaseException) -> str:
    """An exception as one line for a message: a safehold error's own text, else type and text."""
    return str(exc) if isinstance(exc, SafeholdError) else f"{type(exc).__name__}: {exc}"
