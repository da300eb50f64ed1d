"""A snapshot's folder as a zip stream, for people whose tools open zips, not tars.

Written in one pass to a stream that need not be seekable (a pipe): ``zipfile`` then puts
each entry's sizes and CRC in a data descriptor after its data, and ZIP64 records are
forced so files over 4 GiB work. Content is deflated at level 1 (fast; most backup data is
either already compressed or compresses well at any level).

Zip keeps less than tar: modes and symlinks are kept in the Unix attributes (as Info-ZIP
does), modification times as local-free UTC in the "extended timestamp" field (whole
seconds) and in the DOS field (two-second steps, 1980 or later); owners are not kept; a
hard link's second path is stored as a copy; FIFOs and devices are left out and reported.
"""

from __future__ import annotations

import stat
import struct
import time
import zipfile
from typing import IO

from safehold.engine.export.common import DumpResult, content_size, member_name
from safehold.engine.tree_walk import walk
from safehold.ids import blob_from_hex
from safehold.repository import tree as t
from safehold.repository.repository import Repository

_EXT_TIMESTAMP = 0x5455  # Info-ZIP "UT" extra field: flags byte, then mtime (UTC seconds)
_DOS_EPOCH = (1980, 1, 1, 0, 0, 0)


def _info(name: str, node: t.Node, mode_bits: int) -> zipfile.ZipInfo:
    secs = node.mtime_ns // 1_000_000_000
    when = time.gmtime(max(secs, 315532800))[:6]  # the DOS field cannot go before 1980
    info = zipfile.ZipInfo(name, date_time=when if when >= _DOS_EPOCH else _DOS_EPOCH)
    info.create_system = 3  # Unix, so external_attr's high half is st_mode
    info.external_attr = (mode_bits | (node.mode & 0o7777)) << 16
    if 0 <= secs < 2**31:
        info.extra = struct.pack("<HHBl", _EXT_TIMESTAMP, 5, 1, secs)
    return info


def write_zip(repo: Repository, path: str, node: t.Node, out: IO[bytes]) -> DumpResult:
    """Write ``node`` (at ``path``; a folder with everything below it) as a zip stream."""
    result = DumpResult(path, "zip")
    entries = [] if path == "/" else [(path, node)]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for entry_path, entry in entries:
            _add(repo, zf, entry_path, entry, result)
        if node.type == t.DIR and node.subtree:
            for sub_path, sub in walk(repo, node.subtree, "" if path == "/" else path):
                _add(repo, zf, sub_path, sub, result)
    return result


def _add(
    repo: Repository, zf: zipfile.ZipFile, path: str, node: t.Node, result: DumpResult
) -> None:
    name = member_name(path)
    if node.type == t.DIR:
        info = _info(name + "/", node, stat.S_IFDIR)
        info.external_attr |= 0x10  # the MS-DOS directory flag, for non-Unix readers
        zf.writestr(info, b"")
        result.dirs += 1
    elif node.type == t.SYMLINK:
        info = _info(name, node, stat.S_IFLNK)
        info.compress_type = zipfile.ZIP_STORED
        zf.writestr(info, node.target.encode("utf-8", "surrogateescape"))
        result.others += 1
    elif node.type == t.FILE:
        if node.error:
            result.skipped.append((path, f"not read at backup time: {node.error}"))
            return
        size = content_size(repo, path, node)
        info = _info(name, node, stat.S_IFREG)
        info.file_size = size
        with zf.open(info, "w", force_zip64=True) as dest:
            for hex_id in node.content:
                dest.write(repo.load_blob(blob_from_hex(hex_id)))
        result.files += 1
        result.bytes += size
    else:
        result.skipped.append((path, "zip cannot hold FIFOs, devices or sockets"))
