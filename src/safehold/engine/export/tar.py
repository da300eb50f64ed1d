"""A snapshot's folder (or any node) as a tar stream.

The tar is written by ``tarfile`` in stream mode (``w|``), so the output may be a pipe and
the archive is never held in memory or on disk; file contents go in one blob at a time.
Archive names are the paths in the snapshot without the leading ``/`` (``/srv/db/x`` is
``srv/db/x``), as ``restore`` places them under its target. The format is PAX: long names,
large sizes and ids, names that are not UTF-8 and nanosecond modification times all
survive. The second and later paths of a hard-linked file become tar hard links to the
first; sockets cannot be archived and are left out, as restore leaves them out. A
symlink's target is data and is archived as stored (extractors guard against links
themselves).
"""

from __future__ import annotations

import os
import tarfile
from typing import IO

from safehold.engine.export.common import DumpResult, content_size, member_name
from safehold.engine.tree_walk import walk
from safehold.ids import HexId, blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository

_TAR_TYPES = {
    t.FILE: tarfile.REGTYPE,
    t.DIR: tarfile.DIRTYPE,
    t.SYMLINK: tarfile.SYMTYPE,
    t.FIFO: tarfile.FIFOTYPE,
    t.CHARDEV: tarfile.CHRTYPE,
    t.BLOCKDEV: tarfile.BLKTYPE,
}


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

    def __init__(self, repo: Repository, content: list[HexId]) -> None:
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
                self._blob = memoryview(self._repo.load_blob(blob_from_hex(hex_id)))
                continue
            take = len(self._blob) if want is None else min(want, len(self._blob))
            parts.append(bytes(self._blob[:take]))
            self._blob = self._blob[take:]
            if want is not None:
                want -= take
        return parts[0] if len(parts) == 1 else b"".join(parts)
