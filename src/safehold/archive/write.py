"""Writing a snapshot as a plain archive (the layout is ``layout.py``).

The archive is a POSIX (pax) tar of the snapshot (the export's tar writer), compressed with
zstd. With a passphrase it is encrypted exactly as ``openssl enc -aes-256-cbc -pbkdf2 -iter
200000 -md sha256`` writes (``crypto/openssl_enc.py``), so ``openssl enc -d ... | zstd -d |
tar -x`` reverses it. CBC has no authentication of its own: safehold checks the checksum
file before it decrypts anything (docs/storage/archive.md states this trade-off).

Archives are written to a temporary file first (compressed size, in ``tmpdir``) and then
uploaded from a memory map: backends take whole objects, and a map keeps a large archive
out of the process's heap.
"""

from __future__ import annotations

import hashlib
import mmap
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from safehold.archive.layout import ArchiveEntry, label_of, object_name
from safehold.crypto.openssl_enc import Encrypter
from safehold.engine.export import write_tar
from safehold.engine.tree_walk import locate
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.base import Storage


@dataclass(frozen=True, kw_only=True)
class ArchiveOptions:
    """How an archive is written: object name prefix, passphrase (None: not encrypted), zstd
    level, and where the temporary file goes (None: the system's)."""

    prefix: str = ""
    passphrase: bytes | None = None
    level: int = 3
    tmpdir: str | None = None


class _Sink:
    """The end of the write pipeline: optional encryption, hashing, the temporary file."""

    def __init__(self, out: BinaryIO, passphrase: bytes | None) -> None:
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self._enc = None if passphrase is None else Encrypter(passphrase)
        if self._enc is not None:
            self._emit(self._enc.header)

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self._out.write(data)
            self.size += len(data)

    def write(self, data: bytes | memoryview) -> int:
        if self._enc is not None:
            self._emit(self._enc.update(bytes(data)))
        else:
            self._emit(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self._enc is not None:
            self._emit(self._enc.finalize())
        self._out.flush()


def write_archive(
    repo: Repository, snap: Snapshot, storage: Storage, opts: ArchiveOptions
) -> ArchiveEntry:
    """Store ``snap`` as one archive (and its checksum file) in ``storage``."""
    encrypted = opts.passphrase is not None
    name = object_name(opts.prefix, snap, encrypted)
    with tempfile.TemporaryFile(dir=opts.tmpdir, prefix="safehold-archive-") as tmp:
        sink = _Sink(tmp, opts.passphrase)
        compressor = zstandard.ZstdCompressor(level=opts.level, threads=-1)
        with compressor.stream_writer(sink, closefd=False) as zout:  # type: ignore[arg-type]
            path, node = locate(repo, snap, "/")
            write_tar(repo, path, node, zout)
        sink.finish()
        tmp.seek(0)
        if sink.size:
            with mmap.mmap(tmp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                storage.put(name, memoryview(mapped))
        else:  # pragma: no cover - a tar is never empty
            storage.put(name, b"")
    digest = sink.sha.hexdigest()
    base = name.rsplit("/", 1)[-1]
    storage.put(name + ".sha256", f"{digest}  {base}\n".encode())
    return ArchiveEntry(name, snap.time, label_of(snap), snap.short_id, encrypted, sink.size)
