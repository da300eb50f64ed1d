"""Keeping what the repository needs under retention (the immutable mode).

A retention runs from the moment an object is written (docs/format.md, section 1). The
objects a repository needs longest are written first: the config and key files at
``init``, the packs of a chain's first backup, which every later snapshot of the chain
uses. Left alone, they would lose their protection after one period while still needed,
and a client holding the repository's credentials could then delete the key files, which
loses everything. :func:`extend_retention` gives every object the repository still needs a
new end one full period from now, whenever less than half the period is left: the config,
key files, chain markers, snapshots, and the packs and index files that no trash record
names. Trashed packs and the index files of their records are left to run out, so that
prune can delete them after that. Locks and trash records carry no retention.

Extending is idempotent and never shortens a retention, so it needs no lock: a pack that a
concurrent prune moves to the trash meanwhile is only freed up to one period later.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from safehold.errors import ObjectNotFound, SafeholdError
from safehold.repository.repository import Repository
from safehold.storage.capabilities import RetentionKeeper, retention_keeper

__all__ = ["RetentionReport", "extend_retention"]

# Each object costs a HEAD (and a PUT when it is due): many requests of a few
# milliseconds each, so several are kept in flight.
WORKERS = 8


@dataclass
class RetentionReport:
    """What :func:`extend_retention` did: objects looked at, given a new end, or not (why)."""

    checked: int = 0  # objects looked at
    extended: int = 0  # given a new end date
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, why), not extended

    def to_json(self) -> dict[str, Any]:
        """The report as ``--json`` output prints it."""
        return {
            "checked": self.checked,
            "extended": self.extended,
            "failed": [{"name": n, "error": why} for n, why in self.failed],
        }


def extend_retention(repo: Repository) -> RetentionReport | None:
    """Extend the retention of everything ``repo`` still needs (see the module docstring);
    None when its storage keeps no retention. A failure is reported per object, never
    raised: what was not extended this time is tried again the next time."""
    keeper = retention_keeper(repo.storage)
    if keeper is None:
        return None
    report = RetentionReport()
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="retention") as pool:
        for name, outcome in pool.map(lambda n: (n, _extend(keeper, n)), _needed(repo)):
            report.checked += 1
            if isinstance(outcome, SafeholdError):
                report.failed.append((name, outcome.message))
            elif outcome:
                report.extended += 1
    return report


def _extend(keeper: RetentionKeeper, name: str) -> bool | SafeholdError:
    try:
        return keeper.extend_retention(name)
    except ObjectNotFound:
        return False  # removed meanwhile (a forget, a prune): nothing to keep
    except SafeholdError as exc:
        return exc


def _needed(repo: Repository) -> Iterator[str]:
    """The names of every object the repository still needs."""
    records = repo.list_trash()
    trashed = {pack.hex() for rec in records for pack in rec.packs}
    trash_index = {name for rec in records for name in rec.index}
    yield "config"
    for prefix in ("keys/", "chains/", "snapshots/"):
        yield from sorted(o.name for o in repo.storage.list(prefix))
    yield from (n for n in repo.list_index_files() if n not in trash_index)
    for obj in repo.storage.list("data/"):
        if obj.name.rsplit("/", 1)[-1] not in trashed:
            yield obj.name
