"""Repository locks: markers that say a process is using the repository.

A lock is a sealed JSON object under ``locks/`` (docs/format.md, "Locks"). Shared locks
(backup, restore, check, copy, forget, prune) coexist; an exclusive lock (repair, key
removal) excludes all others; two ``prune`` locks exclude each other. A live process
refreshes its lock every :data:`REFRESH_SECONDS`; a lock not refreshed for
:data:`STALE_SECONDS`, or held by a process on this host that no longer exists, is stale and
is removed by the next process that meets it. Prune's two-phase delete relies on each lock's
``created`` time (see :mod:`safehold.repository.prune`).

Who holds a lock is more than a host name and a PID: two containers may share a host name
while their PIDs live in different namespaces, and a PID is reused once its process is gone.
A lock records the kernel's boot id, the holder's PID namespace and the start time of its
process, and a random id of the process. A lock is judged by its PID only when all of these
say it was taken on this very kernel, in this PID namespace: then a PID that is gone, or
that now belongs to a process started at another time, means the holder is gone. Any other
lock (another machine, another container, a lock written before these fields existed) is
judged by its refresh time alone.

A lock object that cannot be read (damaged, junk) names no holder: it is skipped with a
warning when locks are taken (it excludes nobody), it holds back prune's sweep (it might be
a live process's lock, damaged: that process rewrites it at its next refresh), and
``unlock`` removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from safehold.clock import SYSTEM_CLOCK, Clock
from safehold.crypto.aead import Aead
from safehold.errors import IntegrityError, ObjectNotFound, RepositoryLocked, SafeholdError
from safehold.repository.format import T_LOCK, open_object, seal_object
from safehold.storage.base import Storage

REFRESH_SECONDS = 300.0
STALE_SECONDS = 1800.0
PREFIX = "locks/"


@dataclass(frozen=True)
class Holder:
    """Where a lock's process runs, as precisely as this machine can tell (see the module
    docstring). Empty fields are unknown."""

    boot_id: str = ""  # /proc/sys/kernel/random/boot_id: this kernel since its boot
    pid_ns: str = ""  # the PID namespace, as /proc/self/ns/pid names it
    start: int = 0  # the process's start time, in clock ticks after boot
    process: str = ""  # random, one per process

    def to_json(self) -> dict[str, Any]:
        """The holder as the lock object stores it."""
        return {
            "boot_id": self.boot_id,
            "pid_ns": self.pid_ns,
            "start": self.start,
            "process": self.process,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Holder:
        """A holder from a lock object's JSON (missing fields: empty, as older locks have none)."""
        return cls(
            boot_id=str(d.get("boot_id", "")),
            pid_ns=str(d.get("pid_ns", "")),
            start=int(d.get("start", 0)),
            process=str(d.get("process", "")),
        )


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _start_time(pid: int | str) -> int:
    """Field 22 of /proc/PID/stat (after the command name, which may hold spaces); 0 if
    unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[-1].split()
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return 0


@cache
def _process_token() -> str:
    # os.urandom is what secrets.token_bytes returns; importing secrets loads hmac and OpenSSL's
    # libcrypto (4.5 MB in every command), which nothing else needs.
    return os.urandom(8).hex()


def this_holder() -> Holder:
    """The holder fields of this process (read again after a fork: the child differs)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = ""
    return Holder(
        boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
        pid_ns=pid_ns,
        start=_start_time("self"),
        process=f"{_process_token()}-{os.getpid()}",
    )


@dataclass
class LockInfo:
    """A lock object's contents: who holds it (host, process, kernel), since when, its kind,
    and whether it is exclusive."""

    name: str
    created: datetime
    refreshed: datetime
    hostname: str
    pid: int
    exclusive: bool
    kind: str
    holder: Holder = field(default_factory=Holder)

    def to_json(self) -> dict[str, Any]:
        """The lock as its object stores it."""
        return {
            "created": self.created.isoformat(),
            "refreshed": self.refreshed.isoformat(),
            "hostname": self.hostname,
            "pid": self.pid,
            "exclusive": self.exclusive,
            "kind": self.kind,
            **self.holder.to_json(),
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> LockInfo:
        """A lock from its object's JSON; raises ValueError (or KeyError) for a malformed one."""
        created = datetime.fromisoformat(d["created"])
        refreshed = datetime.fromisoformat(d["refreshed"])
        if created.tzinfo is None or refreshed.tzinfo is None:
            raise ValueError("lock times without a time zone")
        return cls(
            name=name,
            created=created,
            refreshed=refreshed,
            hostname=str(d["hostname"]),
            pid=int(d["pid"]),
            exclusive=bool(d["exclusive"]),
            kind=str(d.get("kind", "")),
            holder=Holder.from_json(d),
        )

    def describe(self) -> str:
        """The lock in words, for messages: mode, kind, holder, since when."""
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


def holder_gone(info: LockInfo) -> bool:
    """True only when the lock was taken on this kernel, in this PID namespace, and its
    process no longer runs (its PID is free, or belongs to a process started later)."""
    mine = this_holder()
    theirs = info.holder
    if not (theirs.boot_id and theirs.pid_ns and theirs.start):
        return False  # an older lock, or a holder that could not tell: the time-out decides
    if (theirs.boot_id, theirs.pid_ns) != (mine.boot_id, mine.pid_ns):
        return False
    if info.hostname != socket.gethostname():
        return False
    if not _pid_alive(info.pid):
        return True
    started = _start_time(info.pid)
    return started not in (0, theirs.start)


def is_stale(info: LockInfo, now: datetime) -> bool:
    """Whether a lock may be ignored at ``now``: not refreshed for ``STALE_SECONDS``, or taken
    by a process of this kernel that is gone."""
    if now - info.refreshed > timedelta(seconds=STALE_SECONDS):
        return True
    return holder_gone(info)


# ``tag`` rewrites snapshots (a new object, then the old one deleted): beside another
# ``tag`` or a ``forget`` one could undo the other's work (a tag lost, a snapshot being
# forgotten written back under a new id).
_TAG_CONFLICTS = frozenset({"tag", "forget"})


def conflicts(mine: LockInfo, other: LockInfo) -> bool:
    """Whether ``mine`` may not be held beside ``other``: either is exclusive, a ``tag`` beside
    a ``tag`` or ``forget``, or two prunes."""
    if mine.exclusive or other.exclusive:
        return True
    if (mine.kind == "tag" and other.kind in _TAG_CONFLICTS) or (
        other.kind == "tag" and mine.kind in _TAG_CONFLICTS
    ):
        return True
    return mine.kind == "prune" and other.kind == "prune"


def list_locks(
    storage: Storage,
    aead: Aead,
    *,
    damaged: list[str] | None = None,
    warn: Callable[[str, str], None] | None = None,
) -> list[LockInfo]:
    """Every readable lock. One that cannot be read is left out: its name goes to
    ``damaged`` and a warning to ``warn`` (see the module docstring)."""
    out = []
    for obj in storage.list(PREFIX):
        try:
            raw = storage.get(obj.name)
            doc = json.loads(open_object(aead, raw, T_LOCK, f"lock {obj.name}"))
            out.append(LockInfo.from_json(obj.name, doc))
        except ObjectNotFound:
            continue  # released while we listed
        except (IntegrityError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if damaged is not None:
                damaged.append(obj.name)
            if warn is not None:
                reason = exc.message if isinstance(exc, SafeholdError) else f"not a lock: {exc}"
                warn(
                    obj.name,
                    f"skipped a lock that cannot be read ({reason}); 'safehold unlock' removes it",
                )
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
        """Stop refreshing and delete the lock object (already gone is fine)."""
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
    warn: Callable[[str, str], None] | None = None,
) -> Lock:
    """Take a lock or raise :class:`RepositoryLocked` naming the holder.

    The lock is written first and conflicts are checked after, so two processes racing for
    conflicting locks both see each other and both back off (neither wins silently).
    """
    now = clock.now()
    info = LockInfo(
        name=PREFIX + os.urandom(16).hex(),
        created=now,
        refreshed=now,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        exclusive=exclusive,
        kind=kind,
        holder=this_holder(),
    )
    lock = Lock(storage, aead, info, clock)
    for other in list_locks(storage, aead, warn=warn):
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
    """Remove stale and unreadable locks (or every lock); returns how many were removed.
    Works whatever the locks hold: it never needs to read one to remove it."""
    removed = 0
    now = clock.now()
    if all_locks:
        doomed = [obj.name for obj in storage.list(PREFIX)]
    else:
        damaged: list[str] = []
        infos = list_locks(storage, aead, damaged=damaged)
        doomed = damaged + [info.name for info in infos if is_stale(info, now)]
    for name in doomed:
        try:
            storage.delete(name)
        except ObjectNotFound:
            continue
        removed += 1
    return removed
