"""The forget use case: remove snapshots, by id or by a retention policy applied per group.

Forgetting a snapshot deletes only its ``snapshots/<id>`` object, under a shared lock of
kind ``forget``; the data it alone used is freed later by prune
(:mod:`safehold.repository.prune`). The decision is :func:`safehold.policy.apply_retention`,
applied to each group of snapshots separately (by default one group per host and set of
paths), so that one busy source cannot push another source's snapshots out.

A snapshot the storage refuses to delete because a retention period protects it (S3
Object Lock, the immutable mode) stays: forget reports it as retained, with the end of the
period when the storage told it, and goes on. A later forget with the same rules removes
it once the period is over. The repository is consistent either way: a snapshot is one
object, there or not.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from safehold.errors import IntegrityError, ObjectNotFound, ObjectRetained, UsageError
from safehold.ids import SnapshotId
from safehold.policy.retention import (
    RetentionPolicy,
    RetentionResult,
    apply_retention,
    group_items,
)
from safehold.repository.prune import rescue_for_forget
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot

__all__ = [
    "GROUP_FIELDS",
    "ForgetGroup",
    "ForgetOptions",
    "ForgetResult",
    "RetainedSnapshot",
    "parse_group_by",
    "run_forget",
]

GROUP_FIELDS = ("host", "paths", "tags")
DEFAULT_GROUP_BY = ("host", "paths")

GroupKey = tuple[tuple[str, str | tuple[str, ...]], ...]


@dataclass(kw_only=True)
class ForgetOptions:
    """Which snapshots to forget: a retention policy or ids, the filters, the grouping, and
    whether to only say what would go."""

    policy: RetentionPolicy | None = None
    snapshot_ids: list[str] = field(default_factory=list)  # id prefixes to remove
    # Filters: only snapshots matching all of them are considered.
    host: str | None = None
    tags: list[str] = field(default_factory=list)  # snapshots carrying all these tags
    paths: list[str] = field(default_factory=list)  # snapshots including all these paths
    source: str | None = None  # only snapshots of this configured source (a plan's own)
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    dry_run: bool = False
    # Ids (or unique prefixes) never removed, whatever the rules say: the service's held
    # restore points. Naming one of them for removal is refused.
    held: list[str] = field(default_factory=list)


@dataclass
class ForgetGroup:
    """One group of snapshots (same host, paths... as ``group_by`` says): kept, removed, and the
    rules that kept each."""

    key: dict[str, Any]  # e.g. {"host": "db1", "paths": ["/srv/db"]}; {} when not grouped
    keep: list[Snapshot]  # newest first
    remove: list[Snapshot]  # newest first
    reasons: dict[str, list[str]]  # id of each kept snapshot -> the rules that kept it


@dataclass(frozen=True)
class RetainedSnapshot:
    """A snapshot forget chose to remove but the storage keeps until ``until`` (None:
    it did not say, or a legal hold without end)."""

    snapshot: Snapshot
    until: datetime | None


@dataclass
class ForgetResult:
    """What ``forget`` removed (or would), what the storage's retention kept, and damaged
    snapshots removed by name."""

    groups: list[ForgetGroup]
    removed: list[Snapshot]  # forgotten (or, in a dry run, that would be)
    dry_run: bool
    # Chosen for removal but kept by the storage's retention; not in ``removed``.
    retained: list[RetainedSnapshot] = field(default_factory=list)
    # Snapshot objects named by id that cannot be read (damaged): removed as named.
    damaged: list[SnapshotId] = field(default_factory=list)


def parse_group_by(text: str) -> tuple[str, ...]:
    """``host,paths`` -> ``("host", "paths")``; ``none`` or empty -> one group for all."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts == ["none"] or not parts:
        return ()
    for p in parts:
        if p not in GROUP_FIELDS:
            raise UsageError(
                f"cannot group snapshots by {p!r}",
                hint="use a comma-separated list of host, paths and tags, or none",
            )
    return tuple(dict.fromkeys(parts))


def run_forget(repo: Repository, opts: ForgetOptions) -> ForgetResult:
    """Decide which snapshots to remove and (unless a dry run) delete them.

    Raises :class:`UsageError` when there is neither a policy with a rule nor an id: an
    empty policy would remove everything, which is never done by accident.
    """
    has_policy = opts.policy is not None and not opts.policy.is_empty()
    if opts.snapshot_ids and has_policy:
        raise UsageError(
            "give either snapshot ids or keep rules, not both",
            hint="run forget twice: once with the ids, once with the policy",
        )
    if not opts.snapshot_ids and not has_policy:
        raise UsageError(
            "no snapshot ids and no keep rule given: refusing to remove every snapshot",
            hint="add a rule such as --keep-last 7 or --keep-daily 30, or name snapshots",
        )
    if opts.dry_run:
        # A dry run changes nothing, not even the lock list.
        return _decide(repo, opts)
    with repo.lock("forget"):
        result = _decide(repo, opts)
        rescue_for_forget(repo, result.removed)  # see there: readers of these may be running
        for snap_id in result.damaged:
            # Its data cannot be named (the object does not open), so nothing is rescued
            # for it; a prune stops while it exists, and may go on once it is gone.
            with contextlib.suppress(ObjectNotFound):
                repo.delete_snapshot(snap_id)
        removed = []
        for snap in result.removed:
            try:
                repo.delete_snapshot(snap.id)
            except ObjectNotFound:
                pass  # another forget was quicker: gone all the same
            except ObjectRetained as exc:
                result.retained.append(RetainedSnapshot(snap, exc.until))
                continue
            removed.append(snap)
        result.removed = removed
    return result


def _decide(repo: Repository, opts: ForgetOptions) -> ForgetResult:
    snaps = [s for s in repo.list_snapshots() if _selected(s, opts)]
    if opts.snapshot_ids:
        chosen: dict[str, Snapshot] = {}
        damaged: list[SnapshotId] = []
        for ref in opts.snapshot_ids:
            try:
                snap = repo.find_snapshot(ref, snapshots=snaps)
            except IntegrityError:
                # A damaged snapshot object, named by the user: it can only be removed.
                damaged.extend(i for i in repo.list_snapshot_ids() if i.startswith(ref))
                continue
            chosen[snap.id] = snap
        for snap_id in chosen:
            if _is_held(snap_id, opts.held):
                raise UsageError(
                    f"snapshot {snap_id[:8]} is held: it is not removed while the hold lasts",
                    hint="release the hold first (safehold restore-points release)",
                )
        removed = sorted(chosen.values(), key=lambda s: (s.time, s.id), reverse=True)
        group = ForgetGroup(key={}, keep=[], remove=removed, reasons={})
        return ForgetResult([group], removed, opts.dry_run, damaged=sorted(set(damaged)))
    assert opts.policy is not None
    now = repo.clock.now()
    groups = []
    removed = []
    for key, members in group_items(snaps, lambda s: _group_key(s, opts.group_by)).items():
        decision = _keep_held(apply_retention(members, opts.policy, now), opts.held)
        groups.append(
            ForgetGroup(
                key={
                    name: list(value) if isinstance(value, tuple) else value for name, value in key
                },
                keep=decision.keep,
                remove=decision.remove,
                reasons=decision.reasons,
            )
        )
        removed.extend(decision.remove)
    return ForgetResult(groups, removed, opts.dry_run)


def _is_held(snap_id: str, held: list[str]) -> bool:
    return any(snap_id.startswith(ref) for ref in held)


def _keep_held(decision: RetentionResult[Snapshot], held: list[str]) -> RetentionResult[Snapshot]:
    """The decision with the held snapshots it would remove kept instead, reason ``held``."""
    kept = [s for s in decision.remove if _is_held(s.id, held)]
    if not kept:
        return decision
    return RetentionResult(
        keep=sorted([*decision.keep, *kept], key=lambda s: (s.time, s.id), reverse=True),
        remove=[s for s in decision.remove if not _is_held(s.id, held)],
        reasons=decision.reasons | {snap.id: ["held"] for snap in kept},
    )


def _selected(s: Snapshot, opts: ForgetOptions) -> bool:
    if opts.host and s.hostname != opts.host:
        return False
    if opts.source is not None and s.source_name != opts.source:
        return False
    if opts.tags and not set(opts.tags) <= set(s.tags):
        return False
    return not (opts.paths and not set(opts.paths) <= set(s.paths))


def _group_key(s: Snapshot, fields: tuple[str, ...]) -> GroupKey:
    key: list[tuple[str, str | tuple[str, ...]]] = []
    for name in fields:
        if name == "host":
            key.append(("host", s.hostname))
        elif name == "paths":
            key.append(("paths", tuple(sorted(s.paths))))
        elif name == "tags":
            key.append(("tags", tuple(sorted(s.tags))))
    return tuple(key)
