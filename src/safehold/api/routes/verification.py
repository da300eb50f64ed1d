"""``/api/v1/repositories/verification``: the verification coverage of the repositories
the token's project writes to (docs/verification.md).

A repository is shown to a project when one of the project's plans writes to it: its
location (without credentials) is no secret to those who back up into it, and is not
shown to anyone else.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel

from safehold.api.auth import Reader
from safehold.api.schemas import ErrorBody
from safehold.api.state import api_state
from safehold.clock import utcnow
from safehold.service.coverage import coverages_on, verify_periods

__all__ = ["VerificationOut", "router"]

router = APIRouter(
    prefix="/repositories",
    tags=["verification"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


class VerificationOut(BaseModel):
    """One repository's verification coverage: the share of its stored bytes re-read
    (and found sound) within its period."""

    repository: str  # its location, without credentials
    period: str
    at: datetime
    packs: int
    bytes_total: int
    bytes_read_within_period: int
    coverage: float  # bytes_read_within_period / bytes_total; 1.0 when nothing is stored
    oldest_read: datetime | None
    never_read: int
    damaged_packs: int


@router.get("/verification", name="list_verification")
def list_verification(request: Request, who: Reader) -> list[VerificationOut]:
    """The coverage of each repository with a ``verify:`` block that a plan of the
    token's project writes to."""
    state = api_state(request)
    periods = verify_periods(state.plans().values(), who.project)
    with state.engine.connect() as db:
        found = coverages_on(db, periods, utcnow())
    return [VerificationOut.model_validate(c.to_json()) for c in found]
