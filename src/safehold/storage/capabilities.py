"""Optional capabilities of a storage: a Protocol each, and one way to ask for them.

A backend may do more than the :class:`~safehold.storage.base.Storage` Protocol asks: tell
its own time, keep a retention, read into a caller's buffer... Each such extra is a small
Protocol here, and callers ask with :func:`capability`, which walks down the wrapper stack
(every wrapper keeps the storage it wraps in ``inner``, :class:`Wrapper`) and returns the
first layer that implements it, typed as that Protocol, or None (restic's ``Unwrapper``).
No caller looks for attributes by name, so mypy sees every use.

A wrapper that must stay in the path of a capability's calls implements the Protocol itself
and is found first (``RetryingStorage`` retries ``extend_retention``). One capability is
asked of the outermost layer only: :class:`ReadsInto`, because it replaces a plain ``get``
and a wrapper that does not forward it (``FaultyStorage``) must see the read as a ``get``,
not be bypassed (:func:`read_into`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from safehold.storage.base import Storage
from safehold.storage.common import short_read

if TYPE_CHECKING:  # PEP 747: a Protocol class as a value, typed as what it describes
    from typing_extensions import TypeForm

__all__ = [
    "ForkSafe", "ReadSpan", "ReadsInto", "RetentionKeeper", "ServerClock", "TempFileSweeper",
    "Wrapper", "capability", "fork_safe", "layers", "read_into", "read_span",
    "retention_keeper", "storage_time",
]  # fmt: skip

T = TypeVar("T")


@runtime_checkable
class Wrapper(Protocol):
    """A storage that adds behaviour to the storage it wraps (storage.wrappers)."""

    inner: Storage


@runtime_checkable
class ReadsInto(Protocol):
    """Reads straight into the caller's buffer: the ranged ``get`` of ``len(out)`` bytes at
    ``offset``, with its guarantees and errors, written into ``out``."""

    def get_into(self, name: str, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes of ``name`` from ``offset`` (errors as ``get``)."""


@runtime_checkable
class ReadSpan(Protocol):
    """How many bytes a caller reading many ranges of one object should take per read.
    Remote stores want few, large reads (a round trip each); a local folder reads a
    megabyte as cheaply per byte as more, and the reader's buffers stay small."""

    read_span: int


@runtime_checkable
class ForkSafe(Protocol):
    """Says whether a forked child may read through a copy of the storage: not a backend
    with a connection, since parent and child would share its sockets and read each
    other's replies."""

    fork_safe: bool


@runtime_checkable
class ServerClock(Protocol):
    """A backend whose service keeps time of its own, readable in one cheap call.

    ``server_time`` is the storage's current time as an aware UTC datetime, estimated for
    the moment the call returns (see :func:`~safehold.storage.base.clock_reading`), or None
    when the backend cannot tell this time (no answer, no clock). It never raises.
    """

    def server_time(self) -> datetime | None:
        """The storage's time now (aware, UTC), or None when it cannot tell; never raises."""


@runtime_checkable
class RetentionKeeper(Protocol):
    """A backend that writes objects with a retention period and can lengthen it (S3
    Object Lock, the immutable mode).

    ``keeps_retention`` says whether this location writes with one. ``extend_retention``
    gives the current version of ``name`` a new end a full period from now when less than
    half of the period is left (or it has none), and says whether it did; it never
    shortens one. It raises :class:`StorageError` like any call.
    """

    def keeps_retention(self) -> bool:
        """Whether objects at this location are written with a retention period."""

    def extend_retention(self, name: str) -> bool:
        """Give ``name`` a new end a full period from now if less than half is left; says
        whether it did."""


@runtime_checkable
class TempFileSweeper(Protocol):
    """A backend whose interrupted writes can leave temporary files behind (local).

    ``remove_stale_temp_files`` deletes those older than ``older_than_seconds`` and says how
    many went; a write in progress keeps its file.
    """

    def remove_stale_temp_files(self, older_than_seconds: float) -> int:
        """Delete temporary files older than ``older_than_seconds``; returns how many."""


def layers(storage: Storage) -> Iterator[Storage]:
    """``storage`` and the layers under it, outermost first."""
    layer: Storage | None = storage
    while layer is not None:
        yield layer
        layer = layer.inner if isinstance(layer, Wrapper) else None


def capability(storage: Storage, kind: TypeForm[T]) -> T | None:
    """The first layer of ``storage`` (itself, then what its wrappers wrap) that implements
    the capability Protocol ``kind``; None if none does."""
    for layer in layers(storage):
        if isinstance(layer, kind):  # type: ignore[arg-type]  # kinds are runtime_checkable
            return layer
    return None


# --- what callers ask ----------------------------------------------------------------------


def read_into(storage: Storage, name: str, offset: int, out: memoryview) -> None:
    """Fill ``out`` with the ``len(out)`` bytes of ``name`` at ``offset``, with the same
    guarantees and errors as ``get``.

    A storage that :class:`ReadsInto` reads straight into ``out``: a caller reusing one
    buffer for many reads (restore) then touches no fresh memory per read, which on some
    machines costs more than the read itself. The others are read with ``get`` and copied.
    Only the outermost layer is asked (see the module docstring).
    """
    if isinstance(storage, ReadsInto):
        storage.get_into(name, offset, out)
        return
    data = storage.get(name, offset, len(out))
    if len(data) != len(out):  # a backend breaking the exact-ranged-read guarantee
        raise short_read(storage.describe(), name, offset + len(data), offset, len(out))
    out[:] = data


def read_span(storage: Storage, default: int) -> int:
    """The backend's :class:`ReadSpan` if it has one, else ``default``."""
    found = capability(storage, ReadSpan)
    span = found.read_span if found is not None else 0
    return span if span > 0 else default


def fork_safe(storage: Storage) -> bool:
    """Whether a forked child may read through a copy of ``storage`` (:class:`ForkSafe`)."""
    found = capability(storage, ForkSafe)
    return found is not None and found.fork_safe is True


def storage_time(storage: Storage) -> datetime | None:
    """The storage's own current time (:class:`ServerClock`); None when no layer has a
    clock or the reading failed.

    It is what prune compares its own clock with before trusting a clock-skew margin:
    clients on different machines agree with each other if each agrees with the storage.
    The reading is only as exact as the backend's stamp: an HTTP ``Date`` header or an
    SFTP modification time has one-second resolution, so the error is up to 0.5 s plus
    half the call's round trip (see :func:`~safehold.storage.base.clock_reading`). A
    failure never raises: a missing clock only means "cannot measure".
    """
    clock = capability(storage, ServerClock)
    if clock is None:
        return None
    try:
        found = clock.server_time()
    except Exception:  # advisory: a broken reading must not stop its caller
        return None
    if found is None:
        return None
    if found.tzinfo is None:
        found = found.replace(tzinfo=UTC)
    return found.astimezone(UTC)


def retention_keeper(storage: Storage) -> RetentionKeeper | None:
    """The :class:`RetentionKeeper` of ``storage`` if it keeps a retention at this
    location; else None."""
    keeper = capability(storage, RetentionKeeper)
    return keeper if keeper is not None and keeper.keeps_retention() else None
