"""Looking for what a test's commands left running: processes of a process group."""

from __future__ import annotations

import os
import time
from pathlib import Path


def members(pgid: int) -> list[int]:
    """The live (not zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def gone(pgid: int, within: float = 5.0) -> bool:
    """True once no live process is left in group ``pgid`` (SIGKILL is not instant)."""
    end = time.monotonic() + within
    while members(pgid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def read_pid(path: Path, within: float = 10.0) -> int:
    """The number a command wrote to ``path`` (waiting for it to be written)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{path} was never written")
