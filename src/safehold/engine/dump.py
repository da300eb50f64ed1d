"""The dump use case: one file's bytes, or anything else in a snapshot as a tar stream.

Nothing is staged: a file's blobs go to the output one at a time as
:meth:`~safehold.repository.repository.Repository.load_blob` returns them (which verifies
each blob against its id), and a tar is written by ``tarfile`` in stream mode (``w|``), so
the output may be a pipe and neither the archive nor a whole file is ever held in memory
or on disk.

Archive names are the paths in the snapshot without the leading ``/`` (``/srv/db/x`` is
``srv/db/x``), as ``restore`` places them under its target. The format is PAX: long names,
large sizes and ids, names that are not UTF-8 and nanosecond modification times all
survive. The second and later paths of a hard-linked file become tar hard links to the
first; sockets cannot be archived and are left out, as restore leaves them out.

Member names are made of node names, which the tree decoder has checked to be single path
components (``repository/tree.check_names``), so every name and hard-link name is relative
and free of ``..``; :func:`member_name` checks it again where a name is made, so that an
archive never holds a member that an extractor would write outside its folder. A symlink's
target is data and is archived as stored (extractors guard against links themselves).
A tree that fails those checks stops the dump (exit 4).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from typing import IO

from safehold.engine.tree_walk import find, normalize, walk
from safehold.errors import IntegrityError, ObjectNotFound, UsageError
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

_TAR_TYPES = {
    t.FILE: tarfile.REGTYPE,
    t.DIR: tarfile.DIRTYPE,
    t.SYMLINK: tarfile.SYMTYPE,
    t.FIFO: tarfile.FIFOTYPE,
    t.CHARDEV: tarfile.CHRTYPE,
    t.BLOCKDEV: tarfile.BLKTYPE,
}


@dataclass
class DumpResult:
    path: str  # the normalized path that was dumped
    kind: str  # "file" (its bytes), "tar" or "zip"
    files: int = 0
    dirs: int = 0
    others: int = 0  # symlinks, FIFOs, devices
    bytes: int = 0  # file content written (before tar framing)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def locate(repo: Repository, snap: Snapshot, path: str) -> tuple[str, t.Node]:
    """The node at ``path`` in ``snap``, or a usage error naming what is missing."""
    found = find(repo, snap.tree, path)
    if found is None:
        raise UsageError(
            f"{normalize(path)} is not in snapshot {snap.short_id}",
            hint=f"see 'safehold ls {snap.short_id}'",
        )
    return found


def dump(
    repo: Repository, snap: Snapshot, path: str, out: IO[bytes], *, archive: str = "tar"
) -> DumpResult:
    """Write the file at ``path`` as its bytes, or anything else at ``path`` as an archive
    (``tar``, or ``zip``)."""
    try:
        path, node = locate(repo, snap, path)
        if node.type == t.FILE:
            result = DumpResult(path, "file", files=1)
            result.bytes = write_file(repo, path, node, out)
            return result
        if archive == "zip":
            from safehold.engine.dump_zip import write_zip  # imports this module

            return write_zip(repo, path, node, out)
        return write_tar(repo, path, node, out)
    except ObjectNotFound as exc:
        # Only packs are read here: one the index lists is gone. That is damage (exit 4,
        # as check says), not a failing storage.
        raise IntegrityError(
            f"a pack listed in the index is missing from the storage: {exc.message}",
            hint="run 'safehold check' to see which snapshots and files it affects; "
            "'safehold repair index' makes the index match the packs that remain",
        ) from exc


def member_name(path: str) -> str:
    """The archive member name of the snapshot path ``path``: relative, and without an
    empty, ``.`` or ``..`` component (which checked tree names never give)."""
    name = path.lstrip("/")
    parts = name.split("/")
    if not name or "" in parts or "." in parts or ".." in parts or "\0" in name:
        raise IntegrityError(f"refusing to archive the path {path!r}: it is not a plain path")
    return name


def write_file(repo: Repository, path: str, node: t.Node, out: IO[bytes]) -> int:
    """Write one file's content; returns its size."""
    if node.error:
        raise UsageError(
            f"{path} could not be read when the snapshot was taken ({node.error}); "
            "the snapshot holds no content for it"
        )
    content_size(repo, path, node)  # fail before the first byte, not halfway
    written = 0
    for hex_id in node.content:
        data = repo.load_blob(bytes.fromhex(hex_id))
        out.write(data)
        written += len(data)
    return written


def content_size(repo: Repository, path: str, node: t.Node) -> int:
    """Check that the index holds every blob of ``node`` and that they add up to its size.

    A tar header states the size before the data, so a mismatch found later could only
    leave a corrupt archive behind.
    """
    total = 0
    for hex_id in node.content:
        loc = repo.index.lookup(bytes.fromhex(hex_id))
        if loc is None:
            raise IntegrityError(
                f"{path}: blob {hex_id[:8]} is not in the index",
                hint="run 'safehold repair index', then 'safehold check'",
            )
        total += loc.raw_length
    if total != node.size:
        raise IntegrityError(
            f"{path}: the snapshot records {node.size} bytes but its blobs hold {total}",
            hint="run 'safehold check'",
        )
    return total


def write_tar(repo: Repository, path: str, node: t.Node, out: IO[bytes]) -> DumpResult:
    """Write ``node`` (at ``path``; a folder with everything below it) as a tar stream."""
    result = DumpResult(path, "tar")
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if path != "/":
            _add(repo, tar, path, node, links, result)
        if node.type == t.DIR and node.subtree:
            for sub_path, sub in walk(repo, node.subtree, "" if path == "/" else path):
                _add(repo, tar, sub_path, sub, links, result)
    return result


def _add(
    repo: Repository,
    tar: tarfile.TarFile,
    path: str,
    node: t.Node,
    links: dict[tuple[int, int], str],
    result: DumpResult,
) -> None:
    kind = _TAR_TYPES.get(node.type)
    if kind is None:  # a socket: tar has no type for it
        return
    info = tarinfo(member_name(path), node)
    reader: _ContentReader | None = None
    if node.type == t.FILE:
        key = (node.dev, node.inode)
        first = links.get(key) if node.links > 1 else None
        if first is not None:
            info.type = tarfile.LNKTYPE
            info.linkname = first
        elif node.error:
            result.skipped.append((path, f"not read at backup time: {node.error}"))
            return
        else:
            info.size = content_size(repo, path, node)
            reader = _ContentReader(repo, node.content)
            if node.links > 1:
                links[key] = info.name
            result.bytes += info.size
        result.files += 1
    elif node.type == t.DIR:
        result.dirs += 1
    else:
        result.others += 1
    tar.addfile(info, reader)
    # A TarFile remembers every member it wrote, even in stream mode; a dump never asks for
    # them back, and forgetting them keeps memory flat however many entries there are.
    members = getattr(tar, "members", None)
    if isinstance(members, list):
        members.clear()


def tarinfo(name: str, node: t.Node) -> tarfile.TarInfo:
    """The tar header of ``node`` (size 0; the caller sets it for file content)."""
    info = tarfile.TarInfo(name)
    info.type = _TAR_TYPES[node.type]
    info.mode = node.mode
    info.uid, info.gid = node.uid, node.gid
    info.uname, info.gname = node.user, node.group
    # The ustar field holds whole seconds; the PAX record keeps the nanoseconds.
    info.mtime = node.mtime_ns // 1_000_000_000
    info.pax_headers = {"mtime": pax_time(node.mtime_ns)}
    if node.type == t.SYMLINK:
        info.linkname = node.target
    elif node.type in (t.CHARDEV, t.BLOCKDEV):
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    return info


def pax_time(ns: int) -> str:
    """Nanoseconds since the epoch as a PAX time: exact decimal seconds."""
    sign = "-" if ns < 0 else ""
    secs, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{secs}.{frac:09d}"


class _ContentReader:
    """A file's content as the ``read(n)`` that ``tarfile.addfile`` calls, one blob loaded
    at a time. ``tarfile`` takes a short read for the end of the data, so every ``read``
    returns exactly ``n`` bytes until the content runs out."""

    def __init__(self, repo: Repository, content: list[str]) -> None:
        self._repo = repo
        self._ids = iter(content)
        self._blob = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n if n >= 0 else None
        while want is None or want > 0:
            if not self._blob:
                hex_id = next(self._ids, None)
                if hex_id is None:
                    break
                self._blob = memoryview(self._repo.load_blob(bytes.fromhex(hex_id)))
                continue
            take = len(self._blob) if want is None else min(want, len(self._blob))
            parts.append(bytes(self._blob[:take]))
            self._blob = self._blob[take:]
            if want is not None:
                want -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)
