"""The line a backup with errors ends on (exit 3) tells files that were not read from files
that changed while read: both are in the snapshot, only the first are missing from it."""

from __future__ import annotations

from safehold.cli.cmd_backup import _errors_line
from safehold.engine.backup import CHANGED_WHILE_READ


def test_unreadable_items_only() -> None:
    line = _errors_line([("/a", "permission denied"), ("/b", "input/output error")])
    assert line == "2 item(s) could not be read; they are listed in the snapshot's errors"


def test_changed_files_are_counted_apart() -> None:
    line = _errors_line([("/a", "permission denied"), ("/db", CHANGED_WHILE_READ)])
    assert line.startswith("1 item(s) could not be read, 1 file(s) changed while read")
    assert "may be inconsistent" in line


def test_changed_files_only() -> None:
    line = _errors_line([("/db", CHANGED_WHILE_READ), ("/log", CHANGED_WHILE_READ)])
    assert line.startswith("2 file(s) changed while read and may be inconsistent")
    assert "could not be read" not in line
