"""``/metrics``: the service's Prometheus metrics (:mod:`safehold.service.metrics`).

Who may scrape: a client on the machine itself (a loopback address) without a token,
and sees every project; any other client sends a bearer token of role viewer, operator
or admin and sees its own project's series only (plan and agent names of other projects
are none of its business). The numbers are no secret on the machine that holds the
catalog, and a Prometheus scraping remotely is given a viewer token like any reader.
A token sent from loopback is honoured too: it narrows the answer to its project.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.responses import Response

from safehold.api.auth import principal, require
from safehold.api.state import api_state
from safehold.catalog.models import TokenRole
from safehold.service.coverage import verify_periods
from safehold.service.metrics import CatalogCollector, exposition
from safehold.service.metrics_targets import rpo_targets
from safehold.service.repository_bytes import plan_repositories

__all__ = ["router"]

router = APIRouter(tags=["metrics"])
_bearer = HTTPBearer(auto_error=False, description="a viewer token, unless from loopback")
_reader = require(TokenRole.ADMIN, TokenRole.OPERATOR, TokenRole.VIEWER)


def is_loopback(request: Request) -> bool:
    """Whether the request came from this machine (127.0.0.0/8 or ::1)."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Not in the OpenAPI document: its body is Prometheus's text format, not JSON.
@router.get("/metrics", name="metrics", include_in_schema=False)
async def metrics(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Response:
    """The catalog's metrics in Prometheus's text format, read now."""
    project: str | None = None
    if credentials is not None or not is_loopback(request):
        who = await run_in_threadpool(principal, request, credentials)
        project = _reader(who).project
    state = api_state(request)
    specs = list(state.plans().values())
    collector = CatalogCollector(
        state.engine, project=project, rpo_targets=rpo_targets(specs),
        verify_periods=verify_periods(specs, project), repositories=plan_repositories(specs),
    )  # fmt: skip
    body = await run_in_threadpool(lambda: exposition(collector.collect()))
    # The classic text format (0.0.4), which every Prometheus 2 and 3 reads.
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
