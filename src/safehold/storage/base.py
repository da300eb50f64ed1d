"""The ``Storage`` Protocol every backend implements, and the guarantees it makes; helpers
every backend uses for names and clock readings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from safehold.model import ObjectInfo


@runtime_checkable
class Storage(Protocol):
    """A flat namespace of byte objects.

    Guarantees every backend must give (the conformance suite in ``tests/storage`` checks
    them all):

    * **Atomic put.** After ``put`` returns, readers see the whole object; before, they see
      the previous object or nothing. A crash during ``put`` never leaves a partial object
      visible under ``name``.
    * **Durable put.** When ``put`` returns the object survives a crash of this process
      (and, for ``local``, of the machine: the file and its folder are fsynced).
    * **Exclusive create.** ``put(..., exclusive=True)`` raises :class:`ObjectExists` if the
      name is taken (best effort where the service has no conditional write; documented per
      backend).
    * **No retained buffers.** ``put`` does not keep a reference to ``data`` after it
      returns: callers recycle their pack buffers.
    * **Read-after-write.** ``get``/``stat``/``list`` reflect a completed ``put``/``delete``.
    * **Exact ranged reads.** ``get(name, offset, length)`` returns exactly ``length`` bytes
      or raises :class:`IntegrityError` if the object is shorter; ``length=None`` reads to the
      end. A missing object raises :class:`ObjectNotFound`.
    * **Listing by prefix.** ``list(prefix)`` yields every object whose name starts with
      ``prefix``, in no particular order, each exactly once.
    * **Optional capabilities** (reading into a buffer, a server clock, retention...) are
      Protocols in :mod:`safehold.storage.capabilities`, found through wrappers there.
    * **Delete.** ``delete`` of a missing object raises :class:`ObjectNotFound`.
    * **Classified errors.** Failures are :class:`TransientStorageError` (worth a retry) or
      another :class:`StorageError` (not worth one). Nothing else escapes.
    """

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        """Store ``data`` as ``name``, atomically and durably; ``exclusive``: raise
        :class:`ObjectExists` instead of replacing an object of that name."""

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Exactly ``length`` bytes of ``name`` from ``offset`` (None: to the end); raises
        :class:`ObjectNotFound`, or :class:`IntegrityError` when the object is shorter."""

    def stat(self, name: str) -> ObjectInfo:
        """The name and size of ``name``; raises :class:`ObjectNotFound`."""

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose name starts with ``prefix``, each once, in no order."""

    def delete(self, name: str) -> None:
        """Remove ``name``; raises :class:`ObjectNotFound` if there is none."""

    def describe(self) -> str:
        """A human-readable location for messages; never contains credentials."""

    def close(self) -> None:
        """Release connections and sessions; the storage is not used afterwards."""


def clock_reading(
    stamp: datetime, started: float, ended: float, *, resolution: float = 0.0
) -> datetime:
    """The storage's time at ``ended``, from a ``stamp`` it took while a call ran from
    ``started`` to ``ended`` (seconds of the local monotonic clock).

    The stamp was taken at an unknown moment of the call: the midpoint is the best guess,
    off by at most half the round trip. A stamp truncated to ``resolution`` seconds (an
    HTTP ``Date``: 1 s) lies on average ``resolution / 2`` before the true time. So the
    estimate is ``stamp + resolution / 2 + (ended - started) / 2``, within
    ``resolution / 2 + (ended - started) / 2`` of the truth.
    """
    return stamp + timedelta(seconds=resolution / 2 + max(0.0, ended - started) / 2)


def http_date(value: object) -> datetime | None:
    """An HTTP ``Date`` header (RFC 9110 IMF-fixdate, ``Sun, 06 Nov 1994 08:49:37 GMT``) as
    an aware UTC datetime; None if absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    # Imported here: email.utils brings socket, urllib and the email package (2.6 MB, and
    # every command imports this module), for the few callers that parse an HTTP date.
    from email.utils import parsedate_to_datetime

    try:
        found = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if found.tzinfo is None:  # "-0000": UTC by RFC 5322's convention
        found = found.replace(tzinfo=UTC)
    return found.astimezone(UTC)


def check_name(name: str) -> str:
    """Reject names that could escape a backend's namespace (``..``, absolute, empty parts)."""
    if not name or name.startswith("/") or name.endswith("/"):
        raise ValueError(f"invalid object name {name!r}")
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"invalid object name {name!r}")
    return name
