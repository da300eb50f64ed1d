"""The plain-archive layout: each run as one ``.tar.zst`` that needs no safehold to restore.

Some operators must be able to restore with stock tools (the seeds' service-backup uploads
files under ``YYYY/MM/DD/``; the OSB agent uploads ``YYYY_MM_DD.tar.gz``). An *archive
destination* receives each snapshot as::

    PREFIX/YYYY/MM/DD/LABEL_YYYYMMDDTHHMMSSZ_SNAPSHOT.tar.zst[.enc]
    PREFIX/YYYY/MM/DD/LABEL_YYYYMMDDTHHMMSSZ_SNAPSHOT.tar.zst[.enc].sha256

The archive is a POSIX (pax) tar of the snapshot, compressed with zstd. With a passphrase
it is encrypted exactly as ``openssl enc -aes-256-cbc -pbkdf2 -iter 200000 -md sha256``
writes (``Salted__``, an 8-byte salt, AES-256-CBC with PKCS#7 padding; key and IV from
PBKDF2-HMAC-SHA256), so ``openssl enc -d ... | zstd -d | tar -x`` reverses it. The
``.sha256`` file is in ``sha256sum`` format over the stored bytes, so ``sha256sum -c``
checks a download. CBC has no authentication of its own: safehold checks the checksum
file before it decrypts anything (docs/storage/archive.md states this trade-off).

Archives are written to a temporary file first (compressed size, in ``tmpdir``) and then
uploaded from a memory map: backends take whole objects, and a map keeps a large archive
out of the process's heap. The checksum file is written after the archive, so an archive
without its checksum is an interrupted upload and is neither listed nor restored.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import re
import secrets
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, BinaryIO

import zstandard
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from safehold.engine.archive_extract import ExtractOptions, ExtractResult, check_members, extract
from safehold.engine.export import write_tar
from safehold.engine.tree_walk import locate
from safehold.errors import IntegrityError, UsageError, WrongPassword
from safehold.policy.retention import (
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    group_items,
)
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.base import Storage

__all__ = [
    "ArchiveEntry",
    "ArchiveOptions",
    "ExtractOptions",
    "ExtractResult",
    "forget_archives",
    "list_archives",
    "restore_archive",
    "write_archive",
]

PBKDF2_ITERATIONS = 200_000
_MAGIC = b"Salted__"
_PIECE = 8 << 20
_NAME = re.compile(
    r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(?P<label>[A-Za-z0-9._-]+)_(?P<ts>\d{8}T\d{6}Z)_"
    r"(?P<snap>[0-9a-f]{8,64})\.tar\.zst(?P<enc>\.enc)?$"
)


@dataclass(frozen=True, kw_only=True)
class ArchiveOptions:
    prefix: str = ""
    passphrase: bytes | None = None
    level: int = 3
    tmpdir: str | None = None


@dataclass(frozen=True)
class ArchiveEntry:
    """One stored archive (only those whose checksum file exists)."""

    name: str
    time: datetime
    label: str
    snapshot: str  # the short id of the snapshot it was made from
    encrypted: bool
    size: int
    tags: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.name


def _label(snap: Snapshot) -> str:
    raw = snap.source_name or snap.hostname or "backup"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)


def _object_name(prefix: str, snap: Snapshot, encrypted: bool) -> str:
    when = snap.time.astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    base = f"{when:%Y/%m/%d}/{_label(snap)}_{stamp}_{snap.short_id}.tar.zst"
    if encrypted:
        base += ".enc"
    prefix = prefix.strip("/")
    return f"{prefix}/{base}" if prefix else base


def _derive(passphrase: bytes, salt: bytes) -> tuple[bytes, bytes]:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=48, salt=salt, iterations=PBKDF2_ITERATIONS)
    material = kdf.derive(passphrase)
    return material[:32], material[32:]


class _Sink:
    """The end of the write pipeline: optional encryption, hashing, the temporary file."""

    def __init__(self, out: BinaryIO, passphrase: bytes | None) -> None:
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self._enc = None
        self._pad = None
        if passphrase is not None:
            salt = secrets.token_bytes(8)
            key, iv = _derive(passphrase, salt)
            self._enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
            self._pad = padding.PKCS7(128).padder()
            self._emit(_MAGIC + salt)

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha.update(data)
            self._out.write(data)
            self.size += len(data)

    def write(self, data: bytes | memoryview) -> int:
        if self._enc is not None and self._pad is not None:
            self._emit(self._enc.update(self._pad.update(bytes(data))))
        else:
            self._emit(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        if self._enc is not None and self._pad is not None:
            self._emit(self._enc.update(self._pad.finalize()) + self._enc.finalize())
        self._out.flush()


def write_archive(
    repo: Repository, snap: Snapshot, storage: Storage, opts: ArchiveOptions
) -> ArchiveEntry:
    """Store ``snap`` as one archive (and its checksum file) in ``storage``."""
    encrypted = opts.passphrase is not None
    name = _object_name(opts.prefix, snap, encrypted)
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
    return ArchiveEntry(name, snap.time, _label(snap), snap.short_id, encrypted, sink.size)


def list_archives(storage: Storage, prefix: str = "") -> list[ArchiveEntry]:
    """Complete archives under ``prefix`` (those with a checksum file), oldest first."""
    prefix = prefix.strip("/")
    objects = {o.name: o for o in storage.list(prefix + "/" if prefix else "")}
    out = []
    for name, info in objects.items():
        found = _NAME.search(name)
        if found is None or name + ".sha256" not in objects:
            continue
        when = datetime.strptime(found.group("ts"), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        out.append(
            ArchiveEntry(
                name,
                when,
                found.group("label"),
                found.group("snap"),
                bool(found.group("enc")),
                info.size,
            )
        )
    out.sort(key=lambda e: (e.time, e.name))
    return out


def find_archive(storage: Storage, prefix: str, ref: str) -> ArchiveEntry:
    """The archive named by ``ref``: ``latest``, a snapshot id prefix or an object name."""
    entries = list_archives(storage, prefix)
    if not entries:
        raise UsageError(f"no archives under {prefix or 'the destination root'!r}")
    if ref == "latest":
        return entries[-1]
    hits = [e for e in entries if e.name == ref or e.snapshot.startswith(ref)]
    if len(hits) != 1:
        what = "no archive matches" if not hits else "several archives match"
        raise UsageError(f"{what} {ref!r}", hint="give a longer id or the object name")
    return hits[0]


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


class _Decrypting:
    """A reader that undoes the ``openssl enc`` framing of ``raw``."""

    def __init__(
        self, raw: BinaryIO, passphrase: bytes, derived: dict[bytes, tuple[bytes, bytes]]
    ) -> None:
        head = raw.read(16)
        if len(head) < 16 or not head.startswith(_MAGIC):
            raise IntegrityError("the archive is not in openssl 'Salted__' format")
        salt = head[8:16]
        if salt not in derived:  # PBKDF2 once per restore, not once per pass
            derived[salt] = _derive(passphrase, salt)
        key, iv = derived[salt]
        self._raw = raw
        self._dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._unpad = padding.PKCS7(128).unpadder()
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        piece = self._raw.read(_PIECE if n < 0 else max(n, 16))
        if piece:
            return self._unpad.update(self._dec.update(piece))
        self._done = True
        try:
            return self._unpad.update(self._dec.finalize()) + self._unpad.finalize()
        except ValueError as exc:
            raise WrongPassword(
                "the archive passphrase is wrong (the decrypted padding is invalid)",
                hint="give the passphrase the archive destination was configured with",
            ) from exc


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
    (:mod:`safehold.engine.archive_extract`), after checking its checksum and then every
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
        raw = _Decrypting(tmp, passphrase, derived)  # type: ignore[assignment]
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


def forget_archives(
    storage: Storage,
    prefix: str,
    policy: RetentionPolicy,
    now: datetime,
    *,
    dry_run: bool = False,
) -> RetentionResult[ArchiveEntry]:
    """Apply ``policy`` per label; delete removed archives (checksum file first)."""
    keep: list[ArchiveEntry] = []
    remove: list[ArchiveEntry] = []
    reasons: dict[str, list[str]] = {}
    for group in group_items(list_archives(storage, prefix), lambda e: e.label).values():
        decided = apply_retention(group, policy, now)
        keep += decided.keep
        remove += decided.remove
        reasons.update({k: list(v) for k, v in decided.reasons.items()})
    newest_first = lambda e: (e.time, e.name)  # noqa: E731
    result = RetentionResult(
        keep=sorted(keep, key=newest_first, reverse=True),
        remove=sorted(remove, key=newest_first, reverse=True),
        reasons=reasons,
    )
    if not dry_run:
        for entry in result.remove:
            # Checksum first: an archive without one is no longer listed, so a crash
            # between the two deletes never leaves a listed archive that is half gone.
            storage.delete(entry.name + ".sha256")
            storage.delete(entry.name)
    return result
