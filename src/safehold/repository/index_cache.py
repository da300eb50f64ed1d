"""The local index cache: a repository's index kept on this machine between commands.

Every command that reads or writes blobs needs the whole index, and loading it from the
index files costs a Python step per blob: 0.06-0.1 s for the 40,000 blobs of the benchmark
repository (a tenth of a no-change backup), growing with the repository. The cache holds
the loaded index in the form :meth:`Index.to_bytes` writes, which loads in a few
milliseconds, sealed with the repository's key (docs/format.md, "Local index cache").

**Never wrong, only stale.** The cache records the names of the index files it was built
from. Index files are named by the hash of their bytes, so a name still listed is the same
content: the cache is used when every one of its names is still listed, and the files
listed since are loaded on top of it. When one of its files is gone (prune and
``repair index`` replace index files), the index is loaded from the files and the cache
written again. Whatever goes wrong with the cache file (missing, unreadable, damaged,
another repository's, an older format) makes it a miss, never an error; failing to write
it is ignored too. ``check`` never uses it: it reads every index file.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from safehold.crypto.aead import Aead
from safehold.errors import FormatError, IntegrityError
from safehold.repository.index import Index

MAGIC = b"SHIC"
VERSION = 1
FILE_NAME = "index"
_COUNT = struct.Struct("<I")
_NAME_LEN = struct.Struct("<H")
# Marks the cache root for backup tools (https://bford.info/cachedir/), which skip it.
CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This file is a cache directory tag created by safehold.\n"
)


@dataclass(frozen=True)
class CachedIndex:
    """An index loaded from the cache, with the names of the index files it was built from (the
    caller uses it only while exactly these are listed)."""

    names: frozenset[str]  # the index files the index was built from
    index: Index


class IndexCache:
    """The cache file of one repository: ``ROOT/<repository id>/index``."""

    def __init__(self, root: Path, repo_id: str) -> None:
        self.root = root
        self.path = root / repo_id / FILE_NAME
        self._aad = MAGIC + bytes((VERSION,)) + repo_id.encode()

    def load(self, aead: Aead) -> CachedIndex | None:
        """The cached index, or None (no usable cache: load from the index files)."""
        try:
            raw = self.path.read_bytes()
        except OSError:
            return None
        if raw[: len(MAGIC) + 1] != MAGIC + bytes((VERSION,)):
            return None
        try:
            plain = aead.open(raw[len(MAGIC) + 1 :], self._aad, what="index cache")
            return _decode(plain)
        except (FormatError, IntegrityError):
            return None

    def save(self, aead: Aead, names: Iterable[str], index: Index) -> None:
        """Replace the cache with ``index``, built from the index files ``names``.

        Sealed piece by piece from views of the index's arrays straight into the file
        (``Aead.seal_parts``), so no copy of the cache is ever whole in memory: the end of a
        backup of 200,000 small files peaked here with four 10 MB copies alive at once."""
        folder = self.path.parent
        tmp = ""
        try:
            _make_root(self.root)
            folder.mkdir(mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            with os.fdopen(fd, "wb") as f, index.exported(_names(sorted(names))) as parts:
                f.write(MAGIC + bytes((VERSION,)))
                aead.seal_parts(parts, self._aad, f.write)
            # No fsync: a cache torn by a power cut fails to open and is rebuilt.
            os.replace(tmp, self.path)
            tmp = ""
        except OSError:
            pass  # an unwritable cache only costs the next command the full load
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _make_root(root: Path) -> None:
    if root.is_dir():
        return
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        (root / "CACHEDIR.TAG").write_bytes(CACHEDIR_TAG)


def _names(names: list[str]) -> bytes:
    """The cache's first part: the index files it was built from."""
    parts = [_COUNT.pack(len(names))]
    for name in names:
        raw = name.encode()
        parts += [_NAME_LEN.pack(len(raw)), raw]
    return b"".join(parts)


def _decode(plain: bytes) -> CachedIndex:
    try:
        (count,) = _COUNT.unpack_from(plain, 0)
        pos = _COUNT.size
        names = []
        for _ in range(count):
            (n,) = _NAME_LEN.unpack_from(plain, pos)
            pos += _NAME_LEN.size + n
            if pos > len(plain):
                raise FormatError("index cache is truncated")
            names.append(plain[pos - n : pos].decode())
    except (struct.error, UnicodeDecodeError) as exc:
        raise FormatError("index cache is truncated") from exc
    return CachedIndex(frozenset(names), Index.from_bytes(memoryview(plain)[pos:]))
