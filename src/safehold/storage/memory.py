"""Storage in a dictionary: a real backend, not a mock, for fast tests.

:class:`MemoryStorage` gives every guarantee of the :class:`~safehold.storage.base.Storage`
Protocol within one process (it passes the same conformance suite as ``local``), except
durability: everything is gone when the process exits.

``MemoryStorage.named(NAME)`` returns the same instance for the same name for the life of
the process, so that two parts of a program (or a test and the CLI it drives) opening the
location ``memory:NAME`` see the same objects.

It stays one module, not a package like the other backends: it has no settings, no client
and no foreign exceptions to translate, so the package's other files would be empty.

A memory storage has no clock of its own: ``server_time`` is None, unless a ``clock`` is
given (a :class:`~safehold.clock.FakeClock` set apart from the client's), which lets tests
play a storage whose time disagrees with the client's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import ClassVar

from safehold.clock import Clock
from safehold.errors import ConfigError, IntegrityError, ObjectExists, ObjectNotFound
from safehold.model import ObjectInfo
from safehold.storage.base import check_name

__all__ = ["MemoryStorage", "from_location"]


class MemoryStorage:
    """A thread-safe in-memory object store."""

    _registry: ClassVar[dict[str, MemoryStorage]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, label: str | None = None, clock: Clock | None = None) -> None:
        self.clock = clock  # the storage's own time (None: it has none); see server_time
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._where = f"memory:{label}" if label is not None else f"memory:<anonymous {id(self):x}>"

    @classmethod
    def named(cls, name: str) -> MemoryStorage:
        """The process-wide storage called ``name``, created empty on first use."""
        if not name:
            raise ValueError("a memory storage needs a name")
        with cls._registry_lock:
            storage = cls._registry.get(name)
            if storage is None:
                storage = cls._registry[name] = cls(label=name)
            return storage

    @classmethod
    def forget(cls, name: str) -> None:
        """Drop the named storage (its objects go with it); the next ``named`` starts empty."""
        with cls._registry_lock:
            cls._registry.pop(name, None)

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        pass  # the objects outlive the handle, as files outlive a LocalStorage

    def server_time(self) -> datetime | None:
        """``clock``'s time if one was given (see storage.capabilities.ServerClock), else None."""
        return self.clock.now() if self.clock is not None else None

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        check_name(name)
        value = bytes(data)  # a copy: the caller may reuse its buffer
        with self._lock:
            if exclusive and name in self._objects:
                raise ObjectExists(f"{self._where}: object {name!r} already exists")
            self._objects[name] = value

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_name(name)
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range offset={offset} length={length}")
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise ObjectNotFound(f"{self._where}: cannot read {name!r}: no such object")
        end = len(data) if length is None else offset + length
        if offset > len(data) or end > len(data):
            wanted = "to the end" if length is None else f"{length} bytes"
            raise IntegrityError(
                f"{self._where}: object {name!r} is {len(data)} bytes, "
                f"too short to read {wanted} at offset {offset}",
                hint="the object is truncated or damaged; run `safehold check`",
            )
        return data[offset:end]

    def stat(self, name: str) -> ObjectInfo:
        check_name(name)
        with self._lock:
            data = self._objects.get(name)
        if data is None:
            raise ObjectNotFound(f"{self._where}: cannot stat {name!r}: no such object")
        return ObjectInfo(name, len(data))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # A snapshot taken under the lock: iteration never sees a half-applied put and
        # callers may put or delete while they iterate.
        with self._lock:
            found = [
                ObjectInfo(n, len(d)) for n, d in self._objects.items() if n.startswith(prefix)
            ]
        return iter(found)

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if self._objects.pop(name, None) is None:
                raise ObjectNotFound(f"{self._where}: cannot delete {name!r}: no such object")


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> MemoryStorage:
    """Open ``memory:NAME``, the process-wide store of that name (``create`` changes
    nothing: it is made empty on first use)."""
    if options:
        raise ConfigError(
            f"unknown option(s) for a memory location: {', '.join(sorted(options))}",
            hint="a memory location takes no options",
        )
    if not rest:
        raise ConfigError("the location 'memory:' needs a name", hint="write memory:NAME")
    return MemoryStorage.named(rest)
