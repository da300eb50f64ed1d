"""What the service's benchmarks (service.py, api.py, web.py) share: a scratch folder a
private catalog can live in, call latencies, and the table they print.

Imported by those scripts from beside them (bench/ is not a package)."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A folder under /tmp for a private catalog and its state, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    work.chmod(0o711)  # as root the cluster runs as postgres, who must pass through
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def latencies(call: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median and p99 of ``reps`` calls, in milliseconds."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def print_table(rows: Iterable[tuple[str, str]], *, load_before: float | None = None) -> None:
    """The figures as the Markdown table docs/benchmarks.md shows, after a line saying
    when and on what load they were taken (``load_before``: also the load when the
    timing began)."""
    load = os.getloadavg()[0]
    loads = f"load {load:.1f}"
    if load_before is not None:
        loads = f"load {load_before:.1f} before the timing and {load:.1f} after"
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {loads}\n")
    print("| what | figure |\n|---|---|")
    for what, figure in rows:
        print(f"| {what} | {figure} |")
