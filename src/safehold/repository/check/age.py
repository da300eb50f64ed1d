"""Is every backup recent? The ``--max-age`` part of a check.

Damage is not the only way to lose a backup. Deleting the newest snapshots, or putting an
older copy of the repository in place of the current one, leaves a repository that checks
clean and restores ``latest`` without a word, only an older ``latest``. What gives it away
is time: a schedule that backs up daily must have a snapshot younger than a day and a bit.
So ``check --max-age 26h`` groups the snapshots as backup schedules make them (one host and
set of paths, or one host and configured source) and reports every group whose newest
snapshot is older than that, and also the case where no snapshot matches at all.

The findings are warnings with the code :data:`OVERDUE`: the repository is not damaged
(``safehold check`` exits 4 only for damage), but the CLI exits 13 for them (README, exit
codes), so that a monitor can tell "damaged" from "a backup is missing".

What this cannot see: a snapshot written with a false, recent time by someone who holds the
repository's key (a stolen client can do that), and groups that no filter names and that
vanished entirely; name the groups you expect with ``--host``/``--path``/``--source``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from safehold import units
from safehold.errors import IntegrityError, ObjectNotFound
from safehold.ids import SnapshotId
from safehold.repository.check.options import MaxAge
from safehold.repository.check.report import WARNING, Problem
from safehold.repository.repository import Repository, fetch_each
from safehold.repository.snapshot import Snapshot

__all__ = ["OVERDUE", "overdue_problems", "snapshots_overdue"]

OVERDUE = "backup-overdue"

GroupKey = tuple[str, ...]

_HINT = (
    "check that the backup still runs and succeeds; if it did, newer snapshots were "
    "deleted or an older copy of the repository was put in place (in immutable mode the "
    "retained versions can be brought back: docs/storage/s3.md)"
)


def overdue_problems(
    repo: Repository, snap_ids: list[SnapshotId], rule: MaxAge, now: datetime
) -> list[Problem]:
    """Load the snapshots ``snap_ids`` and judge them (:func:`snapshots_overdue`). A damaged
    one is left out (the snapshot walk reports it), a forgotten one too; a storage failure
    is raised: a snapshot that could not be read may be the newest."""
    snaps = []
    for _sid, got in fetch_each(snap_ids, repo.load_snapshot):
        if isinstance(got, ObjectNotFound | IntegrityError):
            continue
        if isinstance(got, Exception):
            raise got
        snaps.append(got)
    return snapshots_overdue(snaps, rule, now)


def snapshots_overdue(snaps: list[Snapshot], rule: MaxAge, now: datetime) -> list[Problem]:
    """A warning for each group whose newest snapshot is older than ``rule.age`` at ``now``,
    or one when no snapshot matches the rule's filters at all."""
    newest: dict[GroupKey, Snapshot] = {}
    for snap in snaps:
        if not _selected(snap, rule):
            continue
        key = _group(snap)
        if key not in newest or (snap.time, snap.id) > (newest[key].time, newest[key].id):
            newest[key] = snap
    if not newest:
        return [
            Problem(
                WARNING,
                OVERDUE,
                _filters(rule),
                f"there is no snapshot at all; the newest must be younger than {rule.describe()}",
                hint=_HINT,
            )
        ]
    problems = []
    for key in sorted(newest):
        snap = newest[key]
        age = now - snap.time
        if age <= rule.age:
            continue
        problems.append(
            Problem(
                WARNING,
                OVERDUE,
                _describe(key),
                f"the newest snapshot, {snap.short_id} of "
                f"{snap.time.astimezone(UTC):%Y-%m-%d %H:%M} UTC, is "
                f"{units.duration(age.total_seconds())} old: older than {rule.describe()}",
                hint=_HINT,
                snapshot=snap.id,
            )
        )
    return problems


def _selected(snap: Snapshot, rule: MaxAge) -> bool:
    if rule.host is not None and snap.hostname != rule.host:
        return False
    if rule.source is not None and snap.source_name != rule.source:
        return False
    return set(rule.paths) <= set(snap.paths)


def _group(snap: Snapshot) -> GroupKey:
    """What one backup schedule feeds (the groups backups pick their parent from)."""
    if snap.source_name:
        return ("source", snap.hostname, snap.source_name)
    return ("paths", snap.hostname, *sorted(snap.paths))


def _describe(key: GroupKey) -> str:
    kind, host, *rest = key
    if kind == "source":
        return f"host {host}, source {rest[0]}"
    return f"host {host}, paths {', '.join(rest) or '(none)'}"


def _filters(rule: MaxAge) -> str:
    parts = []
    if rule.host is not None:
        parts.append(f"host {rule.host}")
    if rule.source is not None:
        parts.append(f"source {rule.source}")
    if rule.paths:
        parts.append(f"paths {', '.join(rule.paths)}")
    return "snapshots of " + ", ".join(parts) if parts else "the repository"
