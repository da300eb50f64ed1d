"""The restore use case: a snapshot (or parts of it) back into a folder.

Restore reads each pack once, in large ranged reads, opens and verifies every blob against
its id, and writes it to every place it belongs with ``pwrite``. Packs are processed in
parallel; a file is closed and gets its metadata as soon as its last blob is written.
Folders get their metadata last, since creating their children changes their times.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.engine.walk import normalize, selected
from safehold.errors import IntegrityError, TargetError, UsageError
from safehold.repository import tree as t
from safehold.repository.repository import Repository, pack_name
from safehold.repository.snapshot import Snapshot

# Two needed blobs closer than this are fetched in one ranged read.
MAX_GAP = 1024 * 1024


@dataclass(kw_only=True)
class RestoreOptions:
    target: str
    includes: list[str] = field(default_factory=list)
    threads: int = field(default_factory=lambda: max(2, (os.cpu_count() or 2)))
    owner: bool = field(default_factory=lambda: os.geteuid() == 0)  # chown only as root
    overwrite: bool = True


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


class _File:
    __slots__ = ("fd", "lock", "node", "path", "remaining")

    def __init__(self, path: str, node: t.Node, remaining: int) -> None:
        self.path = path
        self.node = node
        self.remaining = remaining
        self.fd = -1
        self.lock = threading.Lock()


def _target_error(path: str, exc: OSError) -> TargetError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetError(
            f"the restore target is full while writing {path}",
            hint="free space or restore to another --target; the repository is unchanged",
        )
    return TargetError(f"cannot write {path}: {exc.strerror}", hint="check the --target folder")


SPARSE_BLOCK = 64 * 1024
_ZEROS = bytes(SPARSE_BLOCK)


def _write_sparse(fd: int, data: bytes, offset: int) -> None:
    """Write only the blocks that are not all zero: the file was extended with ftruncate,
    so skipped blocks stay holes."""
    view = memoryview(data)
    for start in range(0, len(data), SPARSE_BLOCK):
        block = view[start : start + SPARSE_BLOCK]
        if block != _ZEROS[: len(block)]:
            os.pwrite(fd, block, offset + start)


def _set_meta(path: str, node: t.Node, owner: bool, *, is_link: bool = False) -> None:
    if owner:
        with contextlib.suppress(OSError):
            os.chown(path, node.uid, node.gid, follow_symlinks=False)
    if not is_link:
        os.chmod(path, node.mode)
    os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)


class _Restorer:
    def __init__(self, repo: Repository, opts: RestoreOptions, progress: Progress) -> None:
        self.repo = repo
        self.opts = opts
        self.progress = progress
        self.result = RestoreResult()
        self.dirs: list[tuple[str, t.Node]] = []
        self.links: list[tuple[str, t.Node]] = []
        self.hardlinks: dict[tuple[int, int], str] = {}
        self.late_hardlinks: list[tuple[str, tuple[int, int]]] = []
        # blob id -> places it goes: (file, offset)
        self.wanted: dict[bytes, list[tuple[_File, int]]] = defaultdict(list)
        self.files: list[_File] = []
        self.total_bytes = 0

    # --- planning --------------------------------------------------------------------------

    def plan(self, tree_id: str, snap_path: str, dest: str, includes: list[str]) -> None:
        for node in self.repo.load_tree(tree_id):
            path = f"{snap_path}/{node.name}"
            whole, descend = selected(path, includes)
            if not whole and not descend:
                continue
            out = os.path.join(dest, node.name)
            if node.type == t.DIR:
                os.makedirs(out, exist_ok=True)
                self.dirs.append((out, node))
                self.result.dirs += 1
                if node.subtree:
                    self.plan(node.subtree, path, out, [] if whole else includes)
            elif not whole:
                continue
            elif node.type == t.FILE:
                self._plan_file(out, node)
            elif node.type == t.SYMLINK:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out)
                os.symlink(node.target, out)
                self.links.append((out, node))
            elif node.type == t.FIFO:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out)
                os.mkfifo(out, node.mode)
                self.links.append((out, node))
            elif node.type in (t.CHARDEV, t.BLOCKDEV):
                kind = stat.S_IFCHR if node.type == t.CHARDEV else stat.S_IFBLK
                try:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(out)
                    os.mknod(out, node.mode | kind, node.rdev)
                    self.links.append((out, node))
                except PermissionError as exc:
                    self.result.errors.append((out, f"cannot create device: {exc.strerror}"))

    def _plan_file(self, out: str, node: t.Node) -> None:
        if node.error:
            # Nothing was stored for it: writing zeros of its size would invent content.
            self.result.errors.append((out, f"not restored: unreadable at backup ({node.error})"))
            return
        if node.links > 1:
            key = (node.dev, node.inode)
            if key in self.hardlinks:
                self.late_hardlinks.append((out, key))
                return
            self.hardlinks[key] = out
        self.result.files += 1
        self.result.bytes += node.size
        f = _File(out, node, len(node.content))
        if not node.content:
            self._open(f)
            self._close(f)
            return
        offset = 0
        for hex_id in node.content:
            blob_id = bytes.fromhex(hex_id)
            loc = self.repo.index.lookup(blob_id)
            if loc is None:
                raise IntegrityError(
                    f"{out}: blob {hex_id[:8]} is missing from the index",
                    hint="run 'safehold repair index' and 'safehold check'",
                )
            self.wanted[blob_id].append((f, offset))
            offset += loc.raw_length
        self.files.append(f)

    # --- writing ---------------------------------------------------------------------------

    def _open(self, f: _File) -> None:
        try:
            if self.opts.overwrite:
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    st = os.lstat(f.path)
                    if not stat.S_ISREG(st.st_mode):
                        os.unlink(f.path)
            f.fd = os.open(f.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            if f.node.size:
                os.ftruncate(f.fd, f.node.size)  # holes stay holes for sparse files
        except OSError as exc:
            raise _target_error(f.path, exc) from exc

    def _close(self, f: _File) -> None:
        try:
            os.close(f.fd)
            f.fd = -1
            _set_meta(f.path, f.node, self.opts.owner)
        except OSError as exc:
            raise _target_error(f.path, exc) from exc
        self.progress.advance(1, 0)

    def _write(self, blob_id: bytes, data: bytes) -> None:
        for f, offset in self.wanted[blob_id]:
            with f.lock:
                if f.fd < 0:
                    self._open(f)
                try:
                    if f.node.sparse:
                        _write_sparse(f.fd, data, offset)
                    else:
                        os.pwrite(f.fd, data, offset)
                except OSError as exc:
                    raise _target_error(f.path, exc) from exc
                f.remaining -= 1
                if f.remaining == 0:
                    self._close(f)
            self.progress.advance(0, len(data))

    def _do_pack(self, pack_id: bytes, blobs: list[tuple[int, int, int, bytes]]) -> None:
        """``blobs``: (offset, length, raw length, id), sorted by offset."""
        name = pack_name(pack_id)
        i = 0
        while i < len(blobs):
            j = i + 1
            while j < len(blobs) and blobs[j][0] - (blobs[j - 1][0] + blobs[j - 1][1]) < MAX_GAP:
                j += 1
            start = blobs[i][0]
            end = blobs[j - 1][0] + blobs[j - 1][1]
            span = memoryview(self.repo.storage.get(name, start, end - start))
            for off, length, raw_len, blob_id in blobs[i:j]:
                data = self.repo.open_blob(
                    blob_id, span[off - start : off - start + length], raw_len, name
                )
                self._write(blob_id, data)
            i = j

    def run(self) -> None:
        by_pack: dict[bytes, list[tuple[int, int, int, bytes]]] = defaultdict(list)
        for blob_id in self.wanted:
            loc = self.repo.index.lookup(blob_id)
            assert loc is not None
            by_pack[loc.pack_id].append((loc.offset, loc.length, loc.raw_length, blob_id))
        for blobs in by_pack.values():
            blobs.sort()
        self.progress.start("restore", self.result.files, self.result.bytes)
        with ThreadPoolExecutor(self.opts.threads, thread_name_prefix="restore") as pool:
            futures = [pool.submit(self._do_pack, p, b) for p, b in by_pack.items()]
            for fut in futures:
                fut.result()
        for out, key in self.late_hardlinks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            try:
                os.link(self.hardlinks[key], out)
            except OSError as exc:
                raise _target_error(out, exc) from exc
        for out, node in self.links:
            with contextlib.suppress(OSError):
                _set_meta(out, node, self.opts.owner, is_link=node.type == t.SYMLINK)
        for out, node in reversed(self.dirs):
            _set_meta(out, node, self.opts.owner)
        self.progress.finish()


def run_restore(
    repo: Repository, snap: Snapshot, opts: RestoreOptions, progress: Progress = NO_PROGRESS
) -> RestoreResult:
    includes = [normalize(p) for p in opts.includes]
    target = os.path.abspath(opts.target)
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"restore target {target} exists and is not a folder")
    with repo.lock("restore"):
        if not repo.index_loaded:
            repo.load_index()
        r = _Restorer(repo, opts, progress)
        try:
            os.makedirs(target, exist_ok=True)
            r.plan(snap.tree, "", target, includes)
            r.run()
        except OSError as exc:
            raise _target_error(getattr(exc, "filename", None) or target, exc) from exc
    if includes and not (r.result.files or r.result.dirs):
        raise UsageError(
            f"nothing in snapshot {snap.short_id} matches {', '.join(includes)}",
            hint=f"see 'safehold ls {snap.short_id}'",
        )
    return r.result
