"""``safehold agent status``: each source's schedule, next slot, last result and last
success, its open incident and its alerts not sent, from the file and the state file
alone (the agent need not run)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from safehold.agent.due import agent_plans
from safehold.agent.state import AgentState, agent_pid
from safehold.config import Config

__all__ = ["agent_status"]


def agent_status(config: Config, state_dir: Path, now: datetime) -> dict[str, Any]:
    """The agent's pid (None when it is not running) and one entry per source of the file,
    scheduled ones first."""
    plans = agent_plans(config)
    entries = AgentState(state_dir).load()
    sources: list[dict[str, Any]] = []
    for name in sorted(config.sources, key=lambda n: (n not in plans, n)):
        plan = plans.get(name)
        entry = entries.get(name)
        result = entry.last_result if entry else None
        success = entry.last_success if entry else None
        outbox = entry.outbox if entry else []
        age = (now - success.ended).total_seconds() if success and success.ended else None
        sources.append(
            {
                "source": name,
                "plan": plan.key if plan else None,
                "schedule": plan.schedule.describe() if plan else None,
                "paused": plan.rules.paused if plan else None,
                "on_overlap": plan.rules.on_overlap if plan else None,
                "next_slot": plan.schedule.next_after(now).isoformat() if plan else None,
                "decided_until": entry.since.isoformat() if entry and entry.since else None,
                "running": sorted(entry.live_runs()) if entry else [],
                "last_result": result.to_json() if result else None,
                "last_success": success.to_json() if success else None,
                "last_success_age_s": round(age, 1) if age is not None else None,
                "incident": entry.incident if entry else None,
                "deliveries_pending": sum(o.get("state") == "pending" for o in outbox),
                # Failed for good (after alerts.max_attempts): kept to be seen.
                "deliveries_failed": [o for o in outbox if o.get("state") == "failed"],
            }
        )
    incidents = [
        {"source": s["source"], **s["incident"]} for s in sources if s["incident"] is not None
    ]
    return {
        "agent_pid": agent_pid(state_dir),
        "state_dir": str(state_dir),
        "sources": sources,
        "open_incidents": incidents,
    }
