"""Process-wide settings, owned by the program's entry point and by nothing else.

The interpreter's switch interval, the C allocator, the cycle collector, signals and
forking belong to the whole process: a library that changed them would change them for
every other thread and job in it. So library code only asks here whether it may
(:func:`may_use_alarm`, :func:`may_fork`, :func:`walk_switching`), and does without
when the answer is no, correctly if more slowly: a run's time-out is checked between
reads instead of arming SIGALRM, a restore uses threads in one process instead of forked
workers, the backup's walk keeps the interval it finds.

Only an entry point calls :func:`configure`: ``cli/main.py`` with :data:`COMMAND_LINE`,
one short-lived command per process; later the service's worker child with what a
long-running process may use (docs/architecture.md, "Process-wide settings"). Nothing is
applied at import: a program that imports safehold and never calls :func:`configure`
(a test, a service's API process) keeps the interpreter as it found it.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = [
    "COMMAND_LINE",
    "SERVICE",
    "RuntimeSettings",
    "configure",
    "current",
    "frozen_collector",
    "leave_without_collection",
    "may_fork",
    "may_use_alarm",
    "settled",
    "walk_switching",
]


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """What an entry point allows and sets; the defaults change nothing and allow nothing."""

    # The interpreter's switch interval for the whole process (None: left as it is).
    switch_interval: float | None = None
    # A shorter interval the backup's walk sets while it runs, and sets back after. A
    # per-job change of a process-wide value: only for a process that runs one job.
    walk_switch_interval: float | None = None
    # glibc's mmap and trim thresholds and arena count (cli/main.py says why).
    tune_allocator: bool = False
    # The cycle collector's generation thresholds (None: left as they are).
    collector_thresholds: tuple[int, int, int] | None = None
    # A run's time-out may arm SIGALRM (in the main thread) to interrupt a blocked read.
    alarm: bool = False
    # Restores may fork worker processes (each with its own interpreter lock).
    fork: bool = False
    # Once started (:func:`settled`), what start-up made (modules, the configuration, the
    # plans, the web app) is left out of the collector's passes.
    freeze_when_settled: bool = False


# The command line: one command per process, nothing else running in it. Why each value
# (measured):
#
# - switch_interval 1 ms instead of 5: backup and restore threads spend most of their time
#   in C (reading, hashing, compression, encryption) with the lock released, and need it
#   back only briefly between calls; while another thread runs Python (the walk, the
#   planning), each of those short steps waited up to a whole interval. A re-backup after a
#   5 % change took 1.38-1.42 s instead of 1.57-1.68 s, an initial backup of 2 GiB 6.43 s
#   instead of 6.78 s (docs/benchmarks.md).
# - walk_switch_interval 0.2 ms: the walk is pure Python and holds the interpreter lock;
#   the readers, already at work, need it back after every read and hash and wait for the
#   walk to hand it over, once per interval. 5 % re-backup 1.325 -> 1.275 s (6 interleaved
#   runs each); for the whole run it also cost an initial backup 1-2 % (forced switches
#   while readers run alone), hence only during the walk.
# - tune_allocator: large buffers (chunks, packs) go back to the system when freed, the
#   smaller ones stay in the process to be reused. glibc raises its mmap threshold after
#   the first large free, after which multi-MiB buffers come from thread arenas and are
#   kept: peak RSS then grows with every thread. A fixed threshold (which also turns the
#   dynamic adjustment off) keeps them mmapped. Below it, glibc gives freed memory at the
#   top of a heap back once more than 128 KiB is free, and every page given back is
#   faulted in again by the next allocation: on a virtual machine that was a third of a
#   backup's system time (145,000 faults for 2 GiB, 73,000 with this threshold, for 2 MiB
#   more peak RSS). A long-running process that wants its memory back between runs calls
#   ``malloc_trim``.
# - collector_thresholds: a walk allocates one dict per file and folder, none in a cycle,
#   and with the default gen-0 threshold (700) the collector's passes over them took 15 %
#   of a no-change backup of 33,000 files (0.08 s of 0.54). At 10,000 the youngest
#   generation was still collected 24 times in a re-backup after a 5 % change, 35-50 ms in
#   all; at 100,000, 2-6 ms, for 3 MiB more peak memory (105.6 instead of 102.5 MiB: what
#   waits longer to be found is only young garbage). Cycles are still found.
COMMAND_LINE = RuntimeSettings(
    switch_interval=0.001,
    walk_switch_interval=0.0002,
    tune_allocator=True,
    collector_thresholds=(100_000, 20, 20),
    alarm=True,
    fork=True,
)

# The service (`safehold serve` and the commands that talk to its catalog): a process that
# lives for days with an event loop, database connections and threads of its own, and runs
# every job in a child process that is a command line (COMMAND_LINE applies there). It
# changes nothing process-wide: a switch interval or collector setting tuned for one
# backup would slow its event loop, SIGALRM would interrupt whichever thread it lands in,
# and forking a threaded process can leave a lock held forever in the child.
#
# - freeze_when_settled: start-up leaves some hundred thousand objects that live as long as
#   the process (modules, SQLAlchemy's and FastAPI's, a thousand plans' specs), and every
#   pass of the collector's oldest generation walked them all: the dashboard's overview
#   with 1,000 plans took 70 ms at the median but 200-220 ms at the 99th percentile, the
#   requests a pass fell in; frozen once started, 100-120 ms (bench/web.py). Nothing is
#   lost: objects freed by their count still are; only cycles among the frozen ones stay.
SERVICE = RuntimeSettings(freeze_when_settled=True)

_settings = RuntimeSettings()


def configure(settings: RuntimeSettings) -> None:
    """Apply ``settings`` to this process and allow what they allow. For entry points
    only; the allocator's tuning stays for the process's life once applied."""
    global _settings
    if settings.switch_interval is not None:
        sys.setswitchinterval(settings.switch_interval)
    if settings.collector_thresholds is not None:
        gc.set_threshold(*settings.collector_thresholds)
    if settings.tune_allocator:
        _tune_allocator()
    _settings = settings


def current() -> RuntimeSettings:
    """The settings the entry point configured (all off if it configured none)."""
    return _settings


def may_use_alarm() -> bool:
    """Whether this thread may arm SIGALRM: allowed, and the main thread (the only one a
    signal's handler runs in)."""
    return _settings.alarm and threading.current_thread() is threading.main_thread()


def may_fork() -> bool:
    """Whether worker processes may be forked (a threaded server must not: a lock held
    by another thread at the fork stays locked in the child forever)."""
    return _settings.fork and hasattr(os, "fork")


@contextmanager
def walk_switching() -> Iterator[None]:
    """The walk's shorter switch interval while the body runs, if the entry point set one."""
    walk = _settings.walk_switch_interval
    if walk is None:
        yield
        return
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, walk))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@contextmanager
def frozen_collector() -> Iterator[None]:
    """Every object alive now left out of the collector's passes while the body runs
    (around a fork: a child's collector would otherwise write to the header of every
    object it inherited, copying the parent's memory page by page)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # (in this process; a child keeps its copy frozen)


def settled() -> None:
    """Start-up is over (called by the service once its plans and API are made): if the
    entry point allows it, what exists now is frozen out of the collector's passes. May be
    called more than once (each call freezes what was made since)."""
    if _settings.freeze_when_settled:
        gc.collect()  # start-up's own garbage first: frozen, it would stay for good
        gc.freeze()


def leave_without_collection() -> None:
    """Spare the collector's last search for cycles at exit (the entry point, as its last
    step: cli/main.py's ``entry`` says why)."""
    gc.freeze()


def _tune_allocator() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 4)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune
