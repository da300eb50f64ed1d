"""The plain-archive layout: each run as one ``.tar.zst`` that needs no safehold to restore.

Some operators must be able to restore with stock tools (the seeds' service-backup uploads
files under ``YYYY/MM/DD/``; the OSB agent uploads ``YYYY_MM_DD.tar.gz``). An *archive
destination* receives each snapshot as::

    PREFIX/YYYY/MM/DD/LABEL_YYYYMMDDTHHMMSSZ_SNAPSHOT.tar.zst[.enc]
    PREFIX/YYYY/MM/DD/LABEL_YYYYMMDDTHHMMSSZ_SNAPSHOT.tar.zst[.enc].sha256

The ``.sha256`` file is in ``sha256sum`` format over the stored bytes, so ``sha256sum -c``
checks a download. It is written after the archive, so an archive without its checksum is
an interrupted upload and is neither listed nor restored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from safehold.errors import UsageError
from safehold.repository.snapshot import Snapshot
from safehold.storage.base import Storage

NAME = re.compile(
    r"(?:^|/)(\d{4})/(\d{2})/(\d{2})/(?P<label>[A-Za-z0-9._-]+)_(?P<ts>\d{8}T\d{6}Z)_"
    r"(?P<snap>[0-9a-f]{8,64})\.tar\.zst(?P<enc>\.enc)?$"
)


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
        """The archive's id, as commands take it: its object name."""
        return self.name


def label_of(snap: Snapshot) -> str:
    """The label in an archive's name: the source's name, else the host's, with characters
    outside ``[A-Za-z0-9._-]`` replaced by ``-``."""
    raw = snap.source_name or snap.hostname or "backup"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)


def object_name(prefix: str, snap: Snapshot, encrypted: bool) -> str:
    """The object name of ``snap``'s archive under ``prefix``:
    ``YYYY/MM/DD/<label>_<UTC time>_<short id>.tar.zst`` (``.enc`` appended when encrypted)."""
    when = snap.time.astimezone(UTC)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    base = f"{when:%Y/%m/%d}/{label_of(snap)}_{stamp}_{snap.short_id}.tar.zst"
    if encrypted:
        base += ".enc"
    prefix = prefix.strip("/")
    return f"{prefix}/{base}" if prefix else base


def list_archives(storage: Storage, prefix: str = "") -> list[ArchiveEntry]:
    """Complete archives under ``prefix`` (those with a checksum file), oldest first."""
    prefix = prefix.strip("/")
    objects = {o.name: o for o in storage.list(prefix + "/" if prefix else "")}
    out = []
    for name, info in objects.items():
        found = NAME.search(name)
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
