"""The temporary files of interrupted writes (local storage): removed once no live writer can
own them."""

from __future__ import annotations

from datetime import timedelta

from safehold.errors import SafeholdError
from safehold.repository import lock as lockmod
from safehold.repository.prune.options import DEFAULT_LOCK_SKEW
from safehold.repository.repository import Repository
from safehold.storage.capabilities import TempFileSweeper, capability

__all__ = ["TEMP_FILE_MIN_AGE", "remove_stale_temp_files"]

# Temporary files of interrupted writes (local storage) are removed once older than this
# and than every live lock (see remove_stale_temp_files).
TEMP_FILE_MIN_AGE = timedelta(hours=1)


def remove_stale_temp_files(
    repo: Repository, *, lock_skew: timedelta = DEFAULT_LOCK_SKEW, min_age: timedelta | None = None
) -> int:
    """Delete temporary files that interrupted writes left (local storage only); returns
    how many went. Never fails the caller: a leftover only wastes space.

    A writer in progress must keep its file. Every writer takes its lock before it writes,
    and a file's modification time is its last write, so a file last written before the
    oldest live lock was created (less ``lock_skew`` for hosts whose clocks disagree)
    belongs to no live process; ``min_age`` (one hour) also guards writers that take no
    lock (``init``, key files), which write one small object and finish.
    """
    cleaner = capability(repo.storage, TempFileSweeper)
    if cleaner is None:
        return 0
    now = repo.clock.now()
    age = min_age if min_age is not None else TEMP_FILE_MIN_AGE
    try:
        for info in lockmod.list_locks(repo.storage, repo.aead):
            if not lockmod.is_stale(info, now):
                age = max(age, now - info.created + lock_skew)
        return cleaner.remove_stale_temp_files(age.total_seconds())
    except SafeholdError:
        return 0
