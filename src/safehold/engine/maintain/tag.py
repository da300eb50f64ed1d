"""The tag use case: change the tags of snapshots.

A snapshot is an immutable object named by the hash of its bytes, so changing its tags
means writing a new snapshot object (the same one but for ``tags`` and ``original``) and
deleting the old one, as restic does. The new one names the old one in ``original``
(docs/format.md, section 11), or keeps the old one's ``original`` if it had one: the field
``copy`` uses to recognise a snapshot it has already copied, so retagging a snapshot on
either side does not make ``copy`` copy it again.

Order, under a ``tag`` lock (which excludes another ``tag`` or a ``forget``, so that two
of them cannot undo each other's work):

1. every chosen snapshot is confirmed to exist still (one forgotten since it was listed
   must not come back under a new id: its data may already be in prune's trash);
2. the new snapshots are written;
3. the trashed packs the old ones need are rescued (:func:`rescue_for_forget`), exactly
   as before a forget: prune's sweep may have listed the old snapshot before the new one
   existed and read it after it is gone, and then it must find those packs indexed;
4. the old snapshots are deleted.

A crash before 4 leaves both the old and the new snapshot (same data, different tags),
never neither; running the same ``tag`` again finds the new snapshot already written (by
its content: sealed objects differ byte for byte) and only deletes the old one. The new
snapshot references the trees and blobs of one that exists and is held by this lock, so
it is complete the moment it is listed (docs/format.md, section 16).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from safehold.errors import ObjectNotFound, ObjectRetained, UsageError
from safehold.ids import NO_SNAPSHOT
from safehold.repository.prune import rescue_for_forget
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.capabilities import retention_keeper

__all__ = ["TagChange", "TagOptions", "TagResult", "new_tags", "run_tag"]


@dataclass(kw_only=True)
class TagOptions:
    """Tags to add, remove or set, on the snapshots named or matching the filters."""

    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    set: list[str] | None = None  # replaces every tag; [] removes them all
    snapshot_ids: list[str] = field(default_factory=list)  # id prefixes or "latest"
    # Filters: without ids, every snapshot matching all of them is changed.
    host: str | None = None
    tags: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TagChange:
    """One snapshot rewritten with new tags: the old object and the new."""

    old: Snapshot
    new: Snapshot


@dataclass
class TagResult:
    """What ``tag`` changed, left as it was, or wrote anew while the storage keeps the old."""

    changed: list[TagChange] = field(default_factory=list)
    unchanged: list[Snapshot] = field(default_factory=list)  # already tagged as asked
    # Written anew, but the storage keeps the old object (a retention or legal hold).
    kept_old: list[TagChange] = field(default_factory=list)


def new_tags(tags: list[str], opts: TagOptions) -> list[str]:
    """``tags`` changed as ``opts`` asks, sorted and each once (as backup stores them)."""
    out = set(opts.set) if opts.set is not None else set(tags)
    return sorted((out | set(opts.add)) - set(opts.remove))


def _check(opts: TagOptions) -> None:
    if opts.set is not None and (opts.add or opts.remove):
        raise UsageError(
            "--set cannot be combined with --add or --remove",
            hint="--set replaces every tag; use it alone, or use --add and --remove",
        )
    if opts.set is None and not opts.add and not opts.remove:
        raise UsageError("nothing to do", hint="give --add, --remove or --set")
    for tag in [*(opts.set or []), *opts.add, *opts.remove]:
        if not tag or tag != tag.strip() or "," in tag:
            raise UsageError(
                f"{tag!r} is not a tag: tags are non-empty, have no comma and no space at "
                "either end",
            )


def run_tag(repo: Repository, opts: TagOptions) -> TagResult:
    """Change the tags of the chosen snapshots (see the module docstring)."""
    _check(opts)
    if retention_keeper(repo.storage) is not None:
        raise UsageError(
            "this repository keeps every object for a retention period (immutable mode): "
            "retagging would write a new snapshot and could not delete the old one",
            hint="tags are fixed when the backup is made here ('safehold backup --tag')",
        )
    result = TagResult()
    with repo.lock("tag"):
        listed = repo.list_snapshots()
        # Objects are sealed with random nonces: the same snapshot written twice gets two
        # ids. A new snapshot an interrupted run already wrote is found by its content.
        written = {s.encode(): s for s in listed}
        for snap in _choose(listed, opts, repo):
            tags = new_tags(snap.tags, opts)
            if tags == snap.tags:
                result.unchanged.append(snap)
                continue
            new = replace(snap, tags=tags, original=snap.original or snap.id, id=NO_SNAPSHOT)
            result.changed.append(TagChange(snap, written.get(new.encode(), new)))
        for change in result.changed:
            repo.confirm_snapshot(change.old)
        for change in result.changed:
            if not change.new.id:
                repo.save_snapshot(change.new)
        rescue_for_forget(repo, [c.old for c in result.changed])
        done = []
        for change in result.changed:
            try:
                repo.delete_snapshot(change.old.id)
            except ObjectNotFound:
                pass  # gone all the same
            except ObjectRetained:
                result.kept_old.append(change)
                continue
            done.append(change)
        result.changed = done
    return result


def _choose(listed: list[Snapshot], opts: TagOptions, repo: Repository) -> list[Snapshot]:
    snaps = [s for s in listed if _selected(s, opts)]
    if not opts.snapshot_ids:
        return snaps
    chosen = {
        s.id: s for s in (repo.find_snapshot(ref, snapshots=snaps) for ref in opts.snapshot_ids)
    }
    return sorted(chosen.values(), key=lambda s: (s.time, s.id))


def _selected(s: Snapshot, opts: TagOptions) -> bool:
    if opts.host and s.hostname != opts.host:
        return False
    if opts.tags and not set(opts.tags) <= set(s.tags):
        return False
    return not (opts.paths and not set(opts.paths) <= set(s.paths))
