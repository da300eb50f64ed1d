"""The stored size of each repository the service backs up to: the bytes of its packs.

Two sources, the first that knows wins:

- a verification's rotation (``verify_packs``, :mod:`.coverage`), for a repository with a
  ``verify:`` block once a slice has listed its packs;
- else the newest succeeded backup run that recorded its repository's packs
  (``runs.repository_bytes``: the backup's summary's ``repository_packs_bytes``, the
  packs its index listed after it). Any plan writing to the repository counts: the
  newest of them is the freshest figure.

Neither follows a prune at once: a prune since shows at the next backup (or slice). The
metrics and the reports both read it through :func:`repository_bytes_on`; repositories
are named as the verify plans name them, by their location without credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from safehold.catalog import RunKind
from safehold.service.coverage import Coverage
from safehold.service.plans import PlanSpec
from safehold.storage.location import redact

__all__ = ["RepositoryBytes", "plan_repositories", "repository_bytes_on"]


@dataclass(frozen=True)
class RepositoryBytes:
    """One repository's stored bytes and where the figure comes from."""

    repository: str  # its location without credentials
    stored_bytes: int
    source: str  # "verification" or "backup"
    at: datetime | None  # the backup's end (None: from the verification's rotation)


def plan_repositories(specs: Iterable[PlanSpec]) -> dict[str, str]:
    """``plan key -> repository`` (its location without credentials, as its verify plan
    is named) of the backup plans among ``specs`` (the running service's plans)."""
    return {
        spec.key: redact(spec.repository)
        for spec in specs
        if spec.kind is RunKind.BACKUP and spec.repository
    }


# The newest succeeded backup of each plan that recorded its repository's size: one index
# range of runs (plan_id, queued_at) read backwards per plan.
_NEWEST = text(
    "SELECT p.project || '/' || p.name AS key, x.ended_at, x.repository_bytes "
    "FROM plans p CROSS JOIN LATERAL ("
    "  SELECT r.ended_at, r.repository_bytes FROM runs r WHERE r.plan_id = p.id "
    "  AND r.kind = 'backup' AND r.state = 'succeeded' AND r.repository_bytes IS NOT NULL "
    "  ORDER BY r.queued_at DESC LIMIT 1"
    ") x WHERE p.project || '/' || p.name = ANY(CAST(:keys AS text[]))"
)


def repository_bytes_on(
    db: Connection,
    repositories: Mapping[str, str],
    coverages: Iterable[Coverage] = (),
    *,
    project: str | None = None,
) -> list[RepositoryBytes]:
    """The stored bytes of each repository a plan of ``project`` (None: any) writes to,
    by ``repositories`` (:func:`plan_repositories`), and of each one in ``coverages``
    (already narrowed to what the caller may see), sorted by repository. A repository with
    no figure yet (never verified nor backed up since its backups recorded one) is left
    out."""
    found: dict[str, RepositoryBytes] = {
        c.repository: RepositoryBytes(c.repository, c.bytes_total, "verification", None)
        for c in coverages
        if c.packs  # a verify plan whose slices have not listed the packs yet knows nothing
    }
    wanted = {
        repo
        for key, repo in repositories.items()
        if repo not in found and (project is None or key.partition("/")[0] == project)
    }
    keys = [key for key, repo in repositories.items() if repo in wanted]
    if keys:
        for key, ended_at, size in db.execute(_NEWEST, {"keys": keys}).all():
            repo = repositories[key]
            known = found.get(repo)
            if known is None or (known.at is not None and ended_at > known.at):
                found[repo] = RepositoryBytes(repo, int(size), "backup", ended_at)
    return [found[repo] for repo in sorted(found)]
