"""What every source is: a folder tree to walk, or named byte streams to chunk.

A *tree* source (:class:`TreeContent`) names paths; the engine walks them. A *stream*
source yields :class:`Stream` objects: each is opened by the engine, read to its end
straight into the chunker (never through a temporary file) and closed. Closing is where a
stream proves it is complete: a dump tool that exited non-zero, or output that was cut
short, makes the close raise :class:`~safehold.errors.SourceError`, and the engine then
saves no snapshot.

Restoring goes the other way: the engine hands a stream source a :class:`SnapshotFiles`
(the snapshot's files, each read back and verified against its ids as it streams) and
the source pipes them into ``pg_restore``, ``mariadb``, a file, a device...

Sources never import the repository or the engine (an import-linter contract); they deal
only in bytes, processes and files.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

__all__ = [
    "RestoreRequest",
    "SnapshotFiles",
    "Source",
    "Stream",
    "StreamContent",
    "TreeContent",
]


@dataclass(frozen=True)
class Stream:
    """One named byte stream: ``open()`` starts the producer and yields its output.

    ``name`` becomes a file name at the snapshot's root (``globals.sql``, ``shop.pgdump``).
    The context manager's exit raises SourceError when the producer failed; it also stops
    the producer if the consumer fails first.
    """

    name: str
    open: Callable[[], AbstractContextManager[BinaryIO]]
    mode: int = 0o600


@dataclass(frozen=True)
class TreeContent:
    """Folders and files for the engine to walk."""

    paths: list[str]
    excludes: list[str] = field(default_factory=list)
    one_file_system: bool = False
    # The other exclusions of engine/backup/backup.py's BackupOptions, by the same names.
    iexcludes: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    exclude_if_present: list[str] = field(default_factory=list)
    exclude_larger_than: int | None = None


@dataclass(frozen=True)
class StreamContent:
    """Streams, saved in this order as files at the snapshot's root."""

    streams: list[Stream]


class SnapshotFiles(Protocol):
    """A snapshot's root files, as the engine offers them to a restoring source."""

    def names(self) -> list[str]:
        """The file names at the snapshot's root, in stored order."""
        ...

    def size(self, name: str) -> int:
        """The size in bytes of ``name``."""
        ...

    def open(self, name: str) -> AbstractContextManager[BinaryIO]:
        """A reader of ``name``'s bytes, each piece verified against its id as it is read."""
        ...


@dataclass(frozen=True)
class RestoreRequest:
    """Where and how a source restores.

    ``target`` is source-specific: a database name, a connection URL, a file or device
    path, a folder; ``None`` means "where it came from". ``replace`` allows overwriting a
    target that already holds data (refused otherwise). ``jobs`` bounds parallel restore.
    """

    target: str | None = None
    replace: bool = False
    jobs: int = 1
    options: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """A configured source. ``kind`` is recorded in the snapshot (``postgres``, ``redis``...)."""

    kind: str

    def content(self) -> TreeContent | StreamContent:
        """What to back up now (may ask a server, e.g. for its list of databases)."""
        ...

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Restore from a snapshot this source made. Tree sources are restored by the
        engine itself and may raise NotImplementedError here."""
        ...
