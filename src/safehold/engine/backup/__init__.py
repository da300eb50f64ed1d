"""Backup: folders, files, standard input or a command's output -> a snapshot.

The parts, in the order a backup meets them (docs/architecture.md, "Backup pipeline"):
``prescan`` lists folders ahead of the walk; ``scan`` turns the file system's items into
nodes and holds the excludes; ``plan`` (the planner) compares them with the parent
snapshot, decides what to read and builds each folder's tree; ``read_queue`` hands the
changed files to reader threads (files of several chunks largest first, files of one
chunk in walk order), and ``file_reader`` reads and saves them;
``vanished`` tells a folder that went away from a file that failed. ``stream`` saves
standard input, a command's output or a stream source's dumps instead of folders.
``backup`` runs it all; ``preview`` (``--dry-run``) lists what would be saved without
reading a file or writing to the repository.
"""

from __future__ import annotations

from safehold.engine.backup.backup import (
    BackupOptions,
    BackupResult,
    excluder_for,
    run_backup,
    start_prescan,
)
from safehold.engine.backup.file_reader import CHANGED_WHILE_READ
from safehold.engine.backup.preview import BackupPreview, preview_backup

__all__ = [
    "CHANGED_WHILE_READ",
    "BackupOptions",
    "BackupPreview",
    "BackupResult",
    "excluder_for",
    "preview_backup",
    "run_backup",
    "start_prescan",
]
