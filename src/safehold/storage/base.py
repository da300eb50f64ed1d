"""The ``Storage`` Protocol every backend implements, and the guarantees it makes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Protocol, runtime_checkable

from safehold.model import ObjectInfo
from safehold.storage.common import short_read


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
    * **Reading into a buffer (optional).** A backend may add ``get_into(name, offset,
      out)``, the ranged ``get`` of ``len(out)`` bytes written into ``out``; callers go
      through :func:`read_into`, which falls back to ``get`` for the others.
    * **Delete.** ``delete`` of a missing object raises :class:`ObjectNotFound`.
    * **Classified errors.** Failures are :class:`TransientStorageError` (worth a retry) or
      another :class:`StorageError` (not worth one). Nothing else escapes.
    """

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None: ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, name: str) -> ObjectInfo: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, name: str) -> None: ...

    def describe(self) -> str:
        """A human-readable location for messages; never contains credentials."""
        ...

    def close(self) -> None: ...


def read_into(storage: Storage, name: str, offset: int, out: memoryview) -> None:
    """Fill ``out`` with the ``len(out)`` bytes of ``name`` at ``offset``, with the same
    guarantees and errors as ``get``.

    A backend (or wrapper) with a ``get_into(name, offset, out)`` method reads straight into
    ``out``: a caller reusing one buffer for many reads (restore) then touches no fresh
    memory per read, which on some machines costs more than the read itself. The others
    are read with ``get`` and copied.
    """
    get_into = getattr(storage, "get_into", None)
    if get_into is not None:
        get_into(name, offset, out)
        return
    data = storage.get(name, offset, len(out))
    if len(data) != len(out):  # a backend breaking the exact-ranged-read guarantee
        raise short_read(storage.describe(), name, offset + len(data), offset, len(out))
    out[:] = data


def _backend_attr(storage: Storage, name: str) -> object:
    """Attribute ``name`` of ``storage`` or of the first layer under it (wrappers keep
    theirs in ``inner``) that has it; None if none has."""
    layer: object = storage
    while layer is not None:
        value = getattr(layer, name, None)
        if value is not None:
            return value
        layer = getattr(layer, "inner", None)
    return None


def read_span(storage: Storage, default: int) -> int:
    """How many bytes a caller reading many ranges of one object should take per read: a
    backend's ``read_span`` if it (under any wrappers) has one, else ``default``. Remote
    stores want few, large reads (a round trip each); a local folder reads a megabyte as
    cheaply per byte as more, and the reader's buffers stay small."""
    span = _backend_attr(storage, "read_span")
    return span if isinstance(span, int) and span > 0 else default


def fork_safe(storage: Storage) -> bool:
    """Whether a forked child may read through a copy of ``storage`` (its backend says so
    with ``fork_safe = True``). Not a backend with a connection: parent and child would
    share its sockets and read each other's replies."""
    return _backend_attr(storage, "fork_safe") is True


# --- optional capabilities -------------------------------------------------------------------


@runtime_checkable
class ServerClock(Protocol):
    """A backend whose service keeps time of its own, readable in one cheap call.

    ``server_time`` is the storage's current time as an aware UTC datetime, estimated for
    the moment the call returns (see :func:`clock_reading`), or None when the backend
    cannot tell this time (no answer, no clock). It never raises.
    """

    def server_time(self) -> datetime | None: ...


def _layers(storage: Storage) -> Iterator[object]:
    """``storage`` and the layers under it: wrappers keep their inner storage in ``inner``."""
    layer: object = storage
    while layer is not None:
        yield layer
        layer = getattr(layer, "inner", None)


def storage_time(storage: Storage) -> datetime | None:
    """The storage's own current time, from the first layer that implements
    :class:`ServerClock`; None when none does or the reading failed.

    It is what prune compares its own clock with before trusting a clock-skew margin:
    clients on different machines agree with each other if each agrees with the storage.
    The reading is only as exact as the backend's stamp: an HTTP ``Date`` header or an
    SFTP modification time has one-second resolution, so the error is up to 0.5 s plus
    half the call's round trip (see :func:`clock_reading`). A failure never raises: a
    missing clock only means "cannot measure".
    """
    for layer in _layers(storage):
        if isinstance(layer, ServerClock):
            try:
                found = layer.server_time()
            except Exception:  # advisory: a broken reading must not stop its caller
                return None
            if found is None:
                return None
            if found.tzinfo is None:
                found = found.replace(tzinfo=UTC)
            return found.astimezone(UTC)
    return None


@runtime_checkable
class RetentionKeeper(Protocol):
    """A backend that writes objects with a retention period and can lengthen it (S3
    Object Lock, the immutable mode).

    ``keeps_retention`` says whether this location writes with one. ``extend_retention``
    gives the current version of ``name`` a new end a full period from now when less than
    half of the period is left (or it has none), and says whether it did; it never
    shortens one. It raises :class:`StorageError` like any call.
    """

    def keeps_retention(self) -> bool: ...

    def extend_retention(self, name: str) -> bool: ...


def retention_keeper(storage: Storage) -> RetentionKeeper | None:
    """The first layer of ``storage`` that implements :class:`RetentionKeeper`, if it keeps
    a retention at this location; else None."""
    for layer in _layers(storage):
        if isinstance(layer, RetentionKeeper):
            return layer if layer.keeps_retention() else None
    return None


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
