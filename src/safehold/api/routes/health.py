"""``/healthz`` (the process answers) and ``/readyz`` (its database is usable), without a
token: a load balancer or a supervisor asks them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from safehold.api.schemas import ErrorBody, Health, Ready
from safehold.api.state import api_state
from safehold.catalog import migrate
from safehold.errors import DatabaseError

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", name="health")
def health() -> Health:
    """The process answers (nothing else is checked)."""
    return Health()


@router.get("/readyz", name="ready", responses={503: {"model": ErrorBody}})
def ready(request: Request) -> Ready:
    """The database answers and the catalog is at this safehold's newest migration."""
    with api_state(request).engine.connect() as db:
        current = migrate.current(db)
    if current != migrate.head():
        raise DatabaseError(
            f"the catalog is at revision {current}, this safehold's is {migrate.head()}",
            hint="a 'safehold serve' of this version migrates it when it starts",
        )
    return Ready(catalog_revision=current)
