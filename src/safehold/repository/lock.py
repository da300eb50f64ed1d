"""Repository locks: markers that say a process is using the repository.

A lock is a sealed JSON object under ``locks/`` (docs/format.md, "Locks"). Shared locks
(backup, restore, check, copy, forget, prune) coexist; an exclusive lock (repair, key
removal) excludes all others; two ``prune`` locks exclude each other. A live process
refreshes its lock every :data:`REFRESH_SECONDS`; a lock not refreshed for
:data:`STALE_SECONDS`, or held by a process on this host that no longer exists, is stale and
is removed by the next process that meets it. Prune's two-phase delete relies on each lock's
``created`` time (see :mod:`safehold.repository.prune`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from safehold.clock import SYSTEM_CLOCK, Clock
from safehold.crypto.aead import Aead
from safehold.errors import ObjectNotFound, RepositoryLocked, SafeholdError
from safehold.repository.format import T_LOCK, open_object, seal_object
from safehold.storage.base import Storage

REFRESH_SECONDS = 300.0
STALE_SECONDS = 1800.0
PREFIX = "locks/"


@dataclass
class LockInfo:
    name: str
    created: datetime
    refreshed: datetime
    hostname: str
    pid: int
    exclusive: bool
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created.isoformat(),
            "refreshed": self.refreshed.isoformat(),
            "hostname": self.hostname,
            "pid": self.pid,
            "exclusive": self.exclusive,
            "kind": self.kind,
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> LockInfo:
        return cls(
            name=name,
            created=datetime.fromisoformat(d["created"]),
            refreshed=datetime.fromisoformat(d["refreshed"]),
            hostname=d["hostname"],
            pid=int(d["pid"]),
            exclusive=bool(d["exclusive"]),
            kind=d.get("kind", ""),
        )

    def describe(self) -> str:
        mode = "exclusive" if self.exclusive else "shared"
        return (
            f"{mode} {self.kind} lock held by PID {self.pid} on {self.hostname} "
            f"since {self.created:%Y-%m-%d %H:%M:%S} UTC"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited: it holds nothing.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[-1].split()
        if fields and fields[0] == b"Z":
            return False
    return True


def is_stale(info: LockInfo, now: datetime) -> bool:
    if now - info.refreshed > timedelta(seconds=STALE_SECONDS):
        return True
    return info.hostname == socket.gethostname() and not _pid_alive(info.pid)


def conflicts(mine: LockInfo, other: LockInfo) -> bool:
    if mine.exclusive or other.exclusive:
        return True
    return mine.kind == "prune" and other.kind == "prune"


def list_locks(storage: Storage, aead: Aead) -> list[LockInfo]:
    out = []
    for obj in storage.list(PREFIX):
        try:
            raw = storage.get(obj.name)
        except ObjectNotFound:
            continue  # released while we listed
        doc = json.loads(open_object(aead, raw, T_LOCK, f"lock {obj.name}"))
        out.append(LockInfo.from_json(obj.name, doc))
    return out


class Lock:
    """A held lock; refreshed in a background thread until :meth:`release`."""

    def __init__(
        self, storage: Storage, aead: Aead, info: LockInfo, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._storage = storage
        self._aead = aead
        self.info = info
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="lock-refresh", daemon=True)

    def _write(self) -> None:
        self._storage.put(
            self.info.name,
            seal_object(self._aead, T_LOCK, json.dumps(self.info.to_json()).encode()),
        )

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self.info.refreshed = self._clock.now()
            with contextlib.suppress(SafeholdError):
                self._write()

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(ObjectNotFound):
            self._storage.delete(self.info.name)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(
    storage: Storage,
    aead: Aead,
    *,
    kind: str,
    exclusive: bool = False,
    clock: Clock = SYSTEM_CLOCK,
) -> Lock:
    """Take a lock or raise :class:`RepositoryLocked` naming the holder.

    The lock is written first and conflicts are checked after, so two processes racing for
    conflicting locks both see each other and both back off (neither wins silently).
    """
    now = clock.now()
    info = LockInfo(
        name=PREFIX + secrets.token_hex(16),
        created=now,
        refreshed=now,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        exclusive=exclusive,
        kind=kind,
    )
    lock = Lock(storage, aead, info, clock)
    for other in list_locks(storage, aead):
        if is_stale(other, now):
            with contextlib.suppress(ObjectNotFound):
                storage.delete(other.name)
            continue
        if conflicts(info, other):
            raise _locked(other)
    lock._write()
    for other in list_locks(storage, aead):
        if other.name != info.name and not is_stale(other, now) and conflicts(info, other):
            lock.release()
            raise _locked(other)
    lock._thread.start()
    return lock


def _locked(other: LockInfo) -> RepositoryLocked:
    return RepositoryLocked(
        f"the repository is locked: {other.describe()}",
        hint="wait for that process to finish; if it is gone, the lock is removed "
        "automatically once stale, or at once with 'safehold unlock'",
    )


def remove_locks(
    storage: Storage, aead: Aead, *, all_locks: bool, clock: Clock = SYSTEM_CLOCK
) -> int:
    """Remove stale locks (or every lock); returns how many were removed."""
    removed = 0
    now = clock.now()
    for info in list_locks(storage, aead):
        if all_locks or is_stale(info, now):
            with contextlib.suppress(ObjectNotFound):
                storage.delete(info.name)
            removed += 1
    return removed
