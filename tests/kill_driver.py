"""Runs one ``safehold`` command in this process, its storage wrapped so that the process
SIGKILLs itself at an exact storage mutation, or only counts the mutations.

    python tests/kill_driver.py --log FILE [--kill N --at before|after|mid] -- ARGS...

``ARGS`` are the command line ``safehold ARGS`` would get: the command runs through the
CLI's own ``main``, so it takes exactly the path ``safehold`` takes (argument parsing,
``Context.open_repo``, the engine function the command module calls). The one difference
is the storage: :func:`safehold.app.open_storage`, which every repository opened by the
CLI goes through (``copy``'s destination too), is replaced by one that wraps the usual
stack in a :class:`KillingStorage`. All storages of the process share one count.

* Every mutating call (``put``, ``delete``) is appended to the log as a JSON line
  ``{"n", "op", "name", "t"}`` (``t``: wall-clock seconds) when it starts, so the caller
  learns how many there are (M), which object each one is, and when it happened.
* ``--kill N --at before``: the N-th mutation is logged, then the process kills itself
  with SIGKILL before the call reaches the storage. ``after``: once the call has returned.
  ``mid`` (a ``put`` to a local folder only): the object is written to a temporary file
  beside its final name the way :class:`~safehold.storage.local.LocalStorage` writes it
  (``.tmp-`` prefix, whole content, fsynced), and the process dies before the rename: the
  state a crash between write and rename leaves.

A SIGKILL is a real kill: no ``finally``, no ``atexit``, no lock released, other threads
stopped wherever they are. Once the kill point is reached no other thread may start a
mutation (they wait), so the repository holds exactly the first N mutations (N-1 for
``before``), plus whatever other threads had in flight at that moment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import safehold.app
from safehold.model import ObjectInfo
from safehold.storage.base import Storage
from safehold.storage.capabilities import read_into
from safehold.storage.local import TEMP_PREFIX, LocalStorage

BEFORE, AFTER, MID = "before", "after", "mid"


class KillPlan:
    """The shared count of mutating calls, the log, and where to die."""

    def __init__(self, log: Path, kill: int | None, at: str) -> None:
        self.log = open(log, "a", encoding="utf-8")  # noqa: SIM115 (lives until the exit)
        self.kill = kill
        self.at = at
        self.count = 0
        self.lock = threading.Lock()
        self.dying = threading.Event()

    def begin(self, op: str, name: str) -> bool:
        """Counts one mutation and logs it; True when it is the kill point. Once the kill
        point is reached every other mutation blocks until the process is gone."""
        if self.dying.is_set():
            threading.Event().wait()  # forever: the process is about to die
        with self.lock:
            if self.dying.is_set():
                threading.Event().wait()
            self.count += 1
            record = {"n": self.count, "op": op, "name": name, "t": time.time()}
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
            hit = self.count == self.kill
            if hit:
                self.dying.set()
            return hit


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()  # not reached: SIGKILL cannot be caught


def _local_root(storage: Storage) -> Path | None:
    layer: object = storage
    while layer is not None:
        if isinstance(layer, LocalStorage):
            return layer.root
        layer = getattr(layer, "inner", None)
    return None


def leave_temp_file(root: Path, name: str, data: bytes | memoryview) -> None:
    """What a local put killed between its write and its rename leaves: the whole content
    in a hidden temporary file beside the final name (storage/local.py's put)."""
    final = root.joinpath(*name.split("/"))
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, _tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=final.parent)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class KillingStorage:
    """A storage that counts its mutating calls in a :class:`KillPlan` and dies at its kill
    point; every other call goes straight to ``inner``."""

    def __init__(self, inner: Storage, plan: KillPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.root = _local_root(inner)

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        hit = self.plan.begin("put", name)
        if hit and self.plan.at == MID and self.root is not None:
            leave_temp_file(self.root, name, data)
            die()
        if hit and self.plan.at != AFTER:
            die()
        self.inner.put(name, data, exclusive=exclusive)
        if hit:
            die()

    def delete(self, name: str) -> None:
        hit = self.plan.begin("delete", name)
        if hit and self.plan.at != AFTER:
            die()  # "mid" has no meaning for a delete: the same as before
        self.inner.delete(name)
        if hit:
            die()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(name, offset, length)

    def get_into(self, name: str, offset: int, out: memoryview) -> None:
        read_into(self.inner, name, offset, out)

    def stat(self, name: str) -> ObjectInfo:
        return self.inner.stat(name)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


def install(plan: KillPlan) -> None:
    """Make every storage the CLI opens a :class:`KillingStorage` under ``plan``."""
    original: Callable[..., Storage] = safehold.app.open_storage

    def open_storage(
        location: str, *, create: bool = False, options: Mapping[str, object] | None = None
    ) -> Storage:
        return KillingStorage(original(location, create=create, options=options), plan)

    safehold.app.open_storage = open_storage  # type: ignore[assignment]


def parse(argv: list[str]) -> tuple[Any, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: kill_driver.py --log FILE [--kill N --at WHEN] -- ARGS...")
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="kill_driver.py")
    p.add_argument("--log", required=True, type=Path)
    p.add_argument("--kill", type=int)
    p.add_argument("--at", choices=(BEFORE, AFTER, MID), default=BEFORE)
    return p.parse_args(argv[:split]), argv[split + 1 :]


def main() -> int:
    opts, args = parse(sys.argv[1:])
    install(KillPlan(opts.log, opts.kill, opts.at))
    from safehold.cli.main import main as safehold_main

    return safehold_main(args)


if __name__ == "__main__":
    sys.exit(main())
