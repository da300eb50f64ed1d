"""One prune run: sweep earlier trash, remove stale temporary files, mark (repacking), sweep
again; and the clock check that comes first (the package docstring gives the protocol)."""

from __future__ import annotations

from datetime import timedelta

from safehold.errors import ClockSkew
from safehold.repository import lock as lockmod
from safehold.repository.progress import NoProgress, ProgressSink
from safehold.repository.prune.mark import mark_packs
from safehold.repository.prune.options import PruneOptions
from safehold.repository.prune.results import PruneResult, SweepResult
from safehold.repository.prune.sweep import sweep
from safehold.repository.prune.temp_files import remove_stale_temp_files
from safehold.repository.repository import Repository
from safehold.storage.capabilities import storage_time

__all__ = ["CLOCK_READING_ERROR", "check_clock", "prune"]

# How far a reading of the storage's clock may be off (one-second stamps, a round trip).
CLOCK_READING_ERROR = timedelta(seconds=2)


def prune(
    repo: Repository, opts: PruneOptions | None = None, *, progress: ProgressSink | None = None
) -> PruneResult:
    """Sweep earlier trash, mark garbage (repacking mostly unused packs), sweep again.

    A dry run takes no lock, writes and deletes nothing, and reports what a real run would
    do (assuming no process starts meanwhile). ``progress`` hears the long phases: "mark"
    (snapshots walked), "repack" (packs copied, bytes) and "delete" (packs, bytes).
    """
    opts = opts or PruneOptions()
    progress = progress or NoProgress()
    if opts.dry_run:
        return _dry_run(repo, opts, progress)
    skew = check_clock(repo, opts.lock_skew)
    with repo.lock("prune") as held:
        own = held.info.name
        earlier = sweep(repo, own_lock=own, lock_skew=opts.lock_skew, progress=progress)
        temp_files = remove_stale_temp_files(repo, lock_skew=opts.lock_skew)
        mark, used, known = mark_packs(repo, opts, progress)
        swept = sweep(
            repo,
            own_lock=own,
            lock_skew=opts.lock_skew,
            progress=progress,
            _used=used,
            _known=known,
        )
    result = PruneResult(
        False, earlier, mark, swept, swept.packs_waiting, swept.bytes_waiting, temp_files
    )
    result.clock_skew_s = None if skew is None else round(skew.total_seconds(), 3)
    return result


def check_clock(repo: Repository, margin: timedelta) -> timedelta | None:
    """This machine's clock minus the storage's, where the storage has a clock of its own;
    raises :class:`ClockSkew` when they disagree by more than ``margin``.

    The sweep compares lock times written by other machines with trash records written by
    this one, trusting that their clocks agree within ``margin``; a machine that agrees
    with the storage is checked against the one clock every client shares. A reading is
    only good to a second or so (HTTP ``Date`` has one-second resolution), so
    :data:`CLOCK_READING_ERROR` is allowed on top of the margin.
    """
    theirs = storage_time(repo.storage)
    if theirs is None:
        return None
    skew = repo.clock.now() - theirs
    if abs(skew) > margin + CLOCK_READING_ERROR:
        ahead = "ahead of" if skew > timedelta(0) else "behind"
        raise ClockSkew(
            f"this machine's clock is {abs(skew.total_seconds()):.0f} s {ahead} the "
            f"storage's ({repo.storage.describe()}), more than the {margin.total_seconds():.0f} s "
            "prune allows between clocks; it stopped before changing anything",
            hint="set the clock right (NTP) on this machine; or, if every machine that uses "
            "the repository agrees with this one, give a larger --lock-skew margin",
        )
    return skew


def _dry_run(repo: Repository, opts: PruneOptions, progress: ProgressSink) -> PruneResult:
    earlier = sweep(repo, own_lock=None, lock_skew=opts.lock_skew, dry_run=True)
    mark, _used, _known = mark_packs(repo, opts, progress, dry_run=True)
    swept = SweepResult()
    doomed = mark.packs_garbage + mark.packs_repacked
    doomed_bytes = mark.bytes_garbage + mark.bytes_repacked
    if doomed:
        # The record a real run writes now waits for every live lock (all are older).
        now = repo.clock.now()
        swept.waiting_for = sorted(
            info.describe()
            for info in lockmod.list_locks(repo.storage, repo.aead)
            if not lockmod.is_stale(info, now)
        )
        if swept.waiting_for:
            swept.records_waiting = 1
            swept.packs_waiting, swept.bytes_waiting = doomed, doomed_bytes
        else:
            swept.records_swept = 1
            swept.packs_deleted, swept.bytes_freed = doomed, doomed_bytes
    return PruneResult(
        True,
        earlier,
        mark,
        swept,
        earlier.packs_waiting + swept.packs_waiting,
        earlier.bytes_waiting + swept.bytes_waiting,
    )
