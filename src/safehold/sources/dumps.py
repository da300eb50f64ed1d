"""Which per-database dumps of a snapshot a restore writes (shared by postgres and mysql)."""

from __future__ import annotations

from safehold.errors import UsageError

__all__ = ["select_dumps"]


def select_dumps(
    dumps: list[tuple[str, str]], chosen: object, target_db: str | None
) -> list[tuple[str, str]]:
    """``dumps`` are (file name, database) pairs. ``chosen`` (the restore option
    ``database``) keeps that database only; a ``target_db`` that names one of several
    databases restores that one alone."""
    if chosen is not None:
        dumps = [(n, db) for n, db in dumps if db == chosen]
        if not dumps:
            raise UsageError(f"the snapshot holds no dump of database {chosen!r}")
    if target_db is not None and len(dumps) > 1:
        dumps = [(n, db) for n, db in dumps if db == target_db]
        if not dumps:
            raise UsageError(
                f"the snapshot holds several databases; target {target_db!r} is none of them",
                hint="name one of them as the target, or pick one with the restore option "
                "database=NAME and give the new name as the target",
            )
    return dumps
