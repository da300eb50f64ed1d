"""Applying a retention policy to plain archives, per label (the source's name)."""

from __future__ import annotations

from datetime import datetime

from safehold.archive.layout import ArchiveEntry, list_archives
from safehold.policy.retention import (
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    group_items,
)
from safehold.storage.base import Storage


def forget_archives(
    storage: Storage,
    prefix: str,
    policy: RetentionPolicy,
    now: datetime,
    *,
    dry_run: bool = False,
) -> RetentionResult[ArchiveEntry]:
    """Apply ``policy`` per label; delete removed archives (checksum file first)."""
    keep: list[ArchiveEntry] = []
    remove: list[ArchiveEntry] = []
    reasons: dict[str, list[str]] = {}
    for group in group_items(list_archives(storage, prefix), lambda e: e.label).values():
        decided = apply_retention(group, policy, now)
        keep += decided.keep
        remove += decided.remove
        reasons.update({k: list(v) for k, v in decided.reasons.items()})
    newest_first = lambda e: (e.time, e.name)  # noqa: E731
    result = RetentionResult(
        keep=sorted(keep, key=newest_first, reverse=True),
        remove=sorted(remove, key=newest_first, reverse=True),
        reasons=reasons,
    )
    if not dry_run:
        for entry in result.remove:
            # Checksum first: an archive without one is no longer listed, so a crash
            # between the two deletes never leaves a listed archive that is half gone.
            storage.delete(entry.name + ".sha256")
            storage.delete(entry.name)
    return result
