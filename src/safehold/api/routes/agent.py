"""``/api/v1/agent``: an agent's own calls (token role ``agent``), and ``/api/v1/agents``.

An agent registers with its name (the first registration binds it to the token), then
heart-beats every few seconds and long-polls ``GET /agent/jobs/next`` for the jobs of the
plans bound to it (``agent: NAME`` in the service's file). It sends each run's log lines
and, when its child has ended, the end; the service records it as it would a worker's
(:mod:`safehold.service.agents`). An agent needs no inbound port and no database
credentials, and it sees nothing but its own runs: any other run id is 404.
"""

from __future__ import annotations

import ipaddress
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy import text

from safehold.api.auth import Reader, require
from safehold.api.schemas import (
    AgentBeat,
    AgentEnd,
    AgentEnded,
    AgentJob,
    AgentLines,
    AgentOut,
    AgentRegister,
    AgentRegistered,
    ErrorBody,
)
from safehold.api.state import api_state
from safehold.api.tokens import Principal
from safehold.catalog import TokenRole
from safehold.errors import DatabaseUnreachable
from safehold.runs.child import ChildResult
from safehold.service.agents import HEARTBEAT_EVERY, AgentRef, Agents
from safehold.service.jobs import STALL_SECONDS

__all__ = ["MAX_WAIT", "agents_router", "router"]

MAX_WAIT = 60  # seconds a long poll may ask to wait

AgentToken = Annotated[Principal, Depends(require(TokenRole.AGENT))]

router = APIRouter(
    prefix="/agent",
    tags=["agent"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)
agents_router = APIRouter(
    prefix="/agents",
    tags=["agents"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
)


def _agents(request: Request) -> Agents:
    found = api_state(request).agents
    if found is None:
        raise DatabaseUnreachable(
            "this API has no queue to take agents' jobs from",
            hint="agents talk to a running 'safehold serve'",
        )
    return found


def _secure(request: Request) -> bool:
    """Whether credentials may go over this connection: TLS (uvicorn takes a local TLS
    proxy's X-Forwarded-Proto), or loopback, where no one else is on the wire."""
    if request.url.scheme == "https":
        return True
    host = request.client.host if request.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _me(request: Request, who: Principal) -> AgentRef:
    agents = _agents(request)
    return await agents.jobs.patiently(agents.find, who.token_id)


@router.post("/register", name="register_agent", responses={409: {"model": ErrorBody}})
async def register_agent(request: Request, who: AgentToken, body: AgentRegister) -> AgentRegistered:
    """Register the agent (again, after a restart: the jobs its last run held are
    retried). A name registered with another token is 409."""
    agent = await _agents(request).register(
        project=who.project, name=body.name, token_id=who.token_id, host=body.host,
        version=body.version,
    )  # fmt: skip
    return AgentRegistered(name=agent.name, project=agent.project, heartbeat_every=HEARTBEAT_EVERY)


@router.post("/heartbeat", name="agent_heartbeat")
async def agent_heartbeat(request: Request, who: AgentToken) -> AgentBeat:
    """The agent is alive; the answer names the runs it must stop. A 404 says to
    register again."""
    agent = await _me(request, who)
    return AgentBeat(abort=await _agents(request).heartbeat(agent))


@router.post("/stop", name="agent_stop", status_code=204)
async def agent_stop(request: Request, who: AgentToken) -> Response:
    """The agent stops cleanly (after its runs ended)."""
    await _agents(request).stop(await _me(request, who))
    return Response(status_code=204)


@router.get(
    "/jobs/next",
    name="next_agent_job",
    response_model=AgentJob,
    responses={204: {"description": "no job came within the wait"}},
)
async def next_agent_job(
    request: Request,
    who: AgentToken,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description="seconds to wait for one")] = 30,
) -> AgentJob | Response:
    """The agent's next job, claimed for it, or 204 when none came within ``wait``."""
    agent = await _me(request, who)
    found = await _agents(request).next_job(agent, wait, secure=_secure(request))
    if found is None:
        return Response(status_code=204)
    return AgentJob(**found)


@router.post("/runs/{run_id}/lines", name="agent_run_lines", status_code=204,
             responses={409: {"model": ErrorBody}})  # fmt: skip
async def agent_run_lines(
    request: Request, who: AgentToken, run_id: uuid.UUID, body: AgentLines
) -> Response:
    """Log lines of a run the agent is running."""
    agent = await _me(request, who)
    lines: list[tuple[datetime | None, str, str]] = [
        (line.at, line.level, line.message) for line in body.lines
    ]
    await _agents(request).lines(agent, run_id, lines)
    return Response(status_code=204)


@router.post("/runs/{run_id}/end", name="agent_run_end")
async def agent_run_end(
    request: Request, who: AgentToken, run_id: uuid.UUID, body: AgentEnd
) -> AgentEnded:
    """The end of a run the agent ran: recorded, then retried or followed by the plan's
    retention as a worker's run would be."""
    agent = await _me(request, who)
    agents = _agents(request)
    result = ChildResult(body.exit_code, body.record, body.killed, list(body.stderr_tail))
    recorded = await agents.end(agent, run_id, result)
    with agents.engine.connect() as db:
        state = db.execute(text("SELECT state FROM runs WHERE id = :r"), {"r": run_id}).scalar()
    return AgentEnded(run_id=str(run_id), state=str(state), recorded=recorded)  # type: ignore[arg-type]


@agents_router.get("", name="list_agents")
def list_agents(request: Request, who: Reader) -> list[AgentOut]:
    """The project's agents: online (a heartbeat within the stall window), stopped, or
    lost; with the runs each is running."""
    with api_state(request).engine.connect() as db:
        rows = db.execute(
            text(
                "SELECT a.name, a.project, a.host, a.version, a.registered_at, a.heartbeat_at, "
                "a.stopped_at, a.heartbeat_at > now() - make_interval(secs => :stall) AS fresh, "
                "(SELECT count(*) FROM runs r WHERE r.state = 'running' "
                "   AND r.worker = 'agent:' || a.project || '/' || a.name) AS running "
                "FROM agents a WHERE a.project = :p ORDER BY a.name"
            ),
            {"p": who.project, "stall": STALL_SECONDS},
        ).all()
    return [
        AgentOut(
            name=r.name,
            project=r.project,
            host=r.host,
            version=r.version,
            status="stopped" if r.stopped_at else "online" if r.fresh else "lost",
            registered_at=r.registered_at,
            heartbeat_at=r.heartbeat_at,
            running=r.running,
        )
        for r in rows
    ]
