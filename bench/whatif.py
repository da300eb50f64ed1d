"""Run safehold with experimental patches applied at start-up, nothing in src/ changed.

Written for docs/benchmarks.md, "Many small files: where the time goes (2026-12-06)",
against commit 4b92682: the patches reach into private names (``ReadQueue._run``,
``Index._threshold``, ``aead.os``) and break when those move; port them, do not trust
a silent no-op. Run it with the project's interpreter, as ``safehold``:

    WHATIF=a,b,d .venv/bin/python bench/whatif.py -r REPO backup PATH
    WHATIF_PROFILE=out.prof .venv/bin/python bench/whatif.py -r REPO backup PATH

- ``a``: files of one chunk (<= 512 KiB) are read first-in first-out; only larger files go
  through the largest-first heap.
- ``b``: AES-GCM nonces sliced from a per-thread 4 KiB ``os.urandom`` buffer (one getrandom
  per 341 blobs instead of one per blob). Not fork-safe as written.
- ``d``: the index overlay is never merged into the sorted run while the command runs.
- ``e``: the walk keeps the process's 1 ms switch interval instead of 0.2 ms.

``WHATIF_PROFILE=FILE``: cProfile in every thread; FILE holds all threads' statistics,
``FILE.<thread name>`` each thread's.
"""

from __future__ import annotations

import atexit
import collections
import cProfile
import dataclasses
import heapq
import importlib
import os
import pstats
import threading
import types
from typing import Any

SMALL = 512 * 1024


def target(module: str, *names: str) -> Any:
    """The module to patch, refusing one that lacks a name (it moved since 4b92682)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise SystemExit(f"cannot patch {module}: {exc} (moved since 4b92682?)") from None
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        raise SystemExit(f"cannot patch {module}: no {', '.join(missing)}")
    return mod


def patch_fifo() -> None:
    rq = target("safehold.engine.read_queue", "ReadQueue")
    orig_init = rq.ReadQueue.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        orig_init(self, *args, **kwargs)
        self._fifo = collections.deque()

    def put(self: Any, job: Any, size: int) -> None:
        with self._cond:
            if self._error is not None:
                raise self._error
            if size <= SMALL:
                self._fifo.append(job)
            else:
                heapq.heappush(self._heap, (-size, next(self._seq), job))
            self._cond.notify()

    def _run(self: Any) -> None:
        while True:
            with self._cond:
                while (
                    not self._heap and not self._fifo and not self._closed and self._error is None
                ):
                    self._cond.wait()
                if self._error is not None or not (self._heap or self._fifo):
                    return
                job = heapq.heappop(self._heap)[2] if self._heap else self._fifo.popleft()
            try:
                self._read(job)
            except BaseException as exc:
                with self._cond:
                    if self._error is None:
                        self._error = exc
                    self._heap.clear()
                    self._fifo.clear()
                    self._cond.notify_all()
                return

    rq.ReadQueue.__init__ = __init__
    rq.ReadQueue.put = put
    rq.ReadQueue._run = _run


def patch_nonces() -> None:
    aead = target("safehold.crypto.aead", "os")
    local = threading.local()

    def urandom(n: int) -> bytes:
        buf: bytes | None = getattr(local, "buf", None)
        pos: int = getattr(local, "pos", 0)
        if buf is None or pos + n > len(buf):
            buf = local.buf = os.urandom(4092)
            pos = 0
        local.pos = pos + n
        return buf[pos : pos + n]

    aead.os = types.SimpleNamespace(urandom=urandom)


def patch_no_merge() -> None:
    index = target("safehold.repository.index", "Index")
    index.Index._threshold = lambda self: 1 << 40


def patch_switch_interval() -> None:
    # The walk's interval is the command line's runtime setting now (safehold.runtime).
    main = target("safehold.cli.main", "RUNTIME")
    main.RUNTIME = dataclasses.replace(main.RUNTIME, walk_switch_interval=None)


def profiled(out: str) -> None:
    """cProfile in every thread started from here on, and in this one; written at exit."""
    profiles: list[tuple[str, cProfile.Profile]] = []
    orig_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        profiles.append((self.name, prof))
        prof.enable()
        try:
            orig_run(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    main = cProfile.Profile()
    profiles.append(("MainThread", main))
    main.enable()

    def dump() -> None:
        main.disable()
        stats: pstats.Stats | None = None
        for name, prof in profiles:
            prof.create_stats()
            if not getattr(prof, "stats", None):  # (set by create_stats)
                continue
            prof.dump_stats(f"{out}.{name}")
            stats = pstats.Stats(prof) if stats is None else stats.add(prof)
        if stats is not None:
            stats.dump_stats(out)

    atexit.register(dump)


PATCHES = {"a": patch_fifo, "b": patch_nonces, "d": patch_no_merge, "e": patch_switch_interval}


def main() -> None:
    for flag in filter(None, os.environ.get("WHATIF", "").split(",")):
        if flag not in PATCHES:
            raise SystemExit(f"WHATIF: unknown patch {flag!r}; known: {', '.join(PATCHES)}")
        PATCHES[flag]()
    if out := os.environ.get("WHATIF_PROFILE"):
        profiled(out)  # written at exit
    from safehold.cli.main import entry

    entry()


if __name__ == "__main__":
    main()
