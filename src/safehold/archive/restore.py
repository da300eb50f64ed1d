"""Restoring a plain archive: download, check its checksum, check every member, extract.

Nothing is decrypted before the download matches its ``.sha256`` file (the cipher, CBC,
authenticates nothing), and nothing is written before every member name has been checked
(``extract.py``), so a damaged or hostile archive is refused whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
import tempfile
from collections.abc import Iterator
from typing import IO, BinaryIO

import zstandard

from safehold.archive.extract import ExtractOptions, ExtractResult, check_members, extract
from safehold.archive.layout import ArchiveEntry
from safehold.crypto.openssl_enc import DecryptingReader
from safehold.errors import IntegrityError, UsageError, WrongPassword
from safehold.storage.base import Storage

_PIECE = 8 << 20  # bytes per ranged read of the download


def _download(storage: Storage, entry: ArchiveEntry, tmp: BinaryIO) -> None:
    """Copy the archive into ``tmp`` and check it against its checksum file."""
    expected = storage.get(entry.name + ".sha256").decode(errors="replace").split()[:1]
    sha = hashlib.sha256()
    offset = 0
    while offset < entry.size:
        piece = storage.get(entry.name, offset, min(_PIECE, entry.size - offset))
        sha.update(piece)
        tmp.write(piece)
        offset += len(piece)
    if [sha.hexdigest()] != expected:
        raise IntegrityError(
            f"archive {entry.name} does not match its checksum file; nothing was extracted",
            hint="the stored archive is damaged: restore an older one",
        )
    tmp.seek(0)


def restore_archive(
    storage: Storage,
    entry: ArchiveEntry,
    target: str,
    *,
    passphrase: bytes | None = None,
    tmpdir: str | None = None,
    extract_opts: ExtractOptions | None = None,
) -> ExtractResult:
    """Extract ``entry`` into the folder ``target`` as GNU tar would
    (:mod:`safehold.archive.extract`), after checking its checksum and then every
    member name: a damaged archive, or one with a member that would be written outside
    ``target``, is refused before anything is written."""
    if entry.encrypted and passphrase is None:
        raise UsageError(
            f"archive {entry.name} is encrypted", hint="give the destination's passphrase"
        )
    opts = extract_opts or ExtractOptions()
    with tempfile.TemporaryFile(dir=tmpdir, prefix="safehold-archive-") as tmp:
        _download(storage, entry, tmp)
        # Two passes over the downloaded file: a stream can only be read forward, and the
        # member list must be checked in full before the first byte is written (decrypting
        # and decompressing twice costs CPU; keeping the plain tar would cost its size).
        derived: dict[bytes, tuple[bytes, bytes]] = {}
        with _tar_stream(tmp, entry, passphrase, derived) as tar:
            check_members(tar, entry.name)
        with _tar_stream(tmp, entry, passphrase, derived) as tar:
            return extract(tar, target, opts, entry.name)


@contextlib.contextmanager
def _tar_stream(
    tmp: BinaryIO,
    entry: ArchiveEntry,
    passphrase: bytes | None,
    derived: dict[bytes, tuple[bytes, bytes]],
) -> Iterator[tarfile.TarFile]:
    """The downloaded archive ``tmp`` as a tar stream, from its start."""
    tmp.seek(0)
    raw: IO[bytes] = tmp
    if entry.encrypted:
        assert passphrase is not None
        raw = DecryptingReader(tmp, passphrase, derived)  # type: ignore[assignment]
    try:
        with (
            zstandard.ZstdDecompressor().stream_reader(raw, closefd=False) as plain,
            tarfile.open(fileobj=plain, mode="r|") as tar,
        ):
            yield tar
    except zstandard.ZstdError as exc:
        if entry.encrypted:
            raise WrongPassword(
                "the archive passphrase is wrong (the decrypted data is not zstd)",
                hint="give the passphrase the archive destination was configured with",
            ) from exc
        raise IntegrityError(f"archive {entry.name} is not valid zstd: {exc}") from exc
    except (tarfile.TarError, EOFError) as exc:
        raise IntegrityError(
            f"archive {entry.name} is not a valid tar: {exc}",
            hint="the stored archive is damaged: restore an older one",
        ) from exc
