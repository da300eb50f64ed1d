"""The API's application: routes, error handlers and the request size limit, composed.

:func:`create_app` takes the service's parts (:class:`~safehold.api.state.ApiState`) so
that the same app runs inside ``safehold serve``, in tests on a catalog of their own, and
bare (no database: only to write the OpenAPI document).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from safehold import __version__
from safehold.api.auth import FailureLimiter
from safehold.api.errors import error_code, error_response, install_error_handlers
from safehold.api.routes import (
    agent,
    alerts,
    catalog,
    destinations,
    drills,
    health,
    managed,
    metrics,
    plan_admin,
    projects,
    restore_points,
    runs,
    snapshot_files,
    tokens,
    verification,
    workers,
)
from safehold.api.routes import jobs as job_routes
from safehold.api.routes import plans as plan_routes
from safehold.api.schemas import ErrorBody
from safehold.api.state import ApiState
from safehold.errors import RequestTooLarge
from safehold.service.agents import Agents
from safehold.service.jobs import Jobs, Queue
from safehold.service.plans import PlanSpec
from safehold.service.vault import Vault

__all__ = ["MAX_BODY", "create_app"]

MAX_BODY = 64 * 1024  # bytes: the largest body a route takes is a token's name
# An agent's report of a run's end carries its record: each hook's output (64 KiB a
# stream) and its phases.
MAX_AGENT_BODY = 4 * 1024 * 1024


def create_app(
    engine: Engine | None = None,
    *,
    plans: Callable[[], Mapping[str, PlanSpec]] = dict,
    jobs: Queue | None = None,
    limiter: FailureLimiter | None = None,
    max_body: int = MAX_BODY,
    vault: Vault | None = None,
) -> FastAPI:
    """The API over the catalog ``engine``, the service's current ``plans`` and its queue
    ``jobs``; with no engine, an app good only for its OpenAPI document."""
    app = FastAPI(
        title="safehold",
        version=__version__,
        summary="The backup service's REST API: plans, the slot ledger, runs, tokens.",
        description="Every route under /api/v1 takes a bearer token "
        "(`safehold token create`); each token sees its own project only. Errors are "
        '`{"error": {"code", "message", "hint"}}` with a stable code. See docs/api.md.',
        # Operation ids are the routes' names: stable for generated clients.
        generate_unique_id_function=_operation_id,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(known_query)],
    )
    app.state.safehold = ApiState(
        engine=engine,  # type: ignore[arg-type]  # None: the OpenAPI document only
        plans=plans,
        jobs=jobs,
        limiter=limiter or FailureLimiter(),
        # Agents are served by a worker process's queue only (it ends their runs).
        agents=Agents(jobs) if isinstance(jobs, Jobs) else None,
        vault=vault,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(managed.staffeln_router)
    # What any route under /api/v1 may answer besides its own: a body that is not JSON, no
    # or a bad token, a body too large, too many bad tokens, the database away.
    v1 = APIRouter(
        prefix="/api/v1",
        responses={status: {"model": ErrorBody} for status in (400, 401, 413, 429, 503)},
    )
    for module in (plan_routes, runs, managed, projects, tokens, agent):
        v1.include_router(module.router)
    v1.include_router(agent.agents_router)
    v1.include_router(restore_points.router)
    v1.include_router(snapshot_files.router)
    v1.include_router(restore_points.plan_points_router)
    v1.include_router(job_routes.router)
    v1.include_router(workers.router)
    v1.include_router(alerts.router)
    v1.include_router(catalog.router)
    for prefix, noun in destinations.PREFIXES.items():
        v1.include_router(
            destinations.router, prefix=prefix, tags=[prefix.strip("/")],
            generate_unique_id_function=partial(_destination_id, noun=noun),
        )  # fmt: skip
    v1.include_router(plan_admin.router)
    v1.include_router(verification.router)
    v1.include_router(drills.router)
    v1.include_router(drills.plan_drills_router)
    app.include_router(v1)
    if engine is not None:  # the dashboard (docs/dashboard.md), beside the API it calls
        # Imported here: the dashboard stands on the API's routes (it imports them), so
        # the API's module must not import it at its top.
        from safehold.web import mount_dashboard

        mount_dashboard(app)
    app.add_middleware(
        BodyLimit, limit=max_body, larger={"/api/v1/agent/": max(max_body, MAX_AGENT_BODY)}
    )
    return app


def _operation_id(route: APIRoute) -> str:
    return route.name


def _destination_id(route: APIRoute, noun: str) -> str:
    """The destinations' operations under ``noun`` (``list_endpoints``...)."""
    return route.name.replace("destination", noun)


def known_query(request: Request) -> None:
    """Refuse a query parameter the route does not take (422): a misspelt filter
    (``?stat=failed``) must not quietly answer for every run."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = set(request.query_params) - _query_names(route.dependant)
    if unknown:
        raise RequestValidationError(
            [{"loc": ("query", name), "msg": "not a parameter of this route",
              "type": "extra_forbidden"} for name in sorted(unknown)[:5]]
        )  # fmt: skip


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


class BodyLimit:
    """Refuses a request whose body is over ``limit`` bytes with 413, before a route reads
    it: by its ``Content-Length``, or, for a chunked body, as soon as the bytes received
    pass the limit."""

    def __init__(self, app: ASGIApp, limit: int, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.larger = larger or {}  # path prefix -> its own limit

    def _limit(self, path: str) -> int:
        for prefix, limit in self.larger.items():
            if path.startswith(prefix):
                return limit
        return self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope.get("path", ""))
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await self._refuse(scope, receive, send, limit)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # Starlette's exception, not ours: FastAPI turns any other error raised
                # while it reads a body into a 400, and lets this one through.
                raise StarletteHTTPException(413)
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        message, hint = _too_large(limit)
        response = error_response(413, error_code(RequestTooLarge), message, hint,
                                  {"Connection": "close"})  # fmt: skip
        await response(scope, receive, send)


def _too_large(limit: int) -> tuple[str, str]:
    return f"the request's body is over {limit} bytes", "send a smaller body"
