"""The agent: backups run next to the data, on a service's VM.

So far the **standalone** agent, Cloud Foundry service-backup's way: ``safehold agent
--config FILE`` runs the file's scheduled sources on their schedules with no service and
no database, keeping its small state in a local JSON file. Its modules:

- ``due``: which slots run, by the service's own slot rule (:mod:`safehold.policy.slots`)
  fed from the state file instead of a ledger;
- ``state``: the state file (``agent.json``: per source the newest slot decided, the last
  result, the last success, the runs going), written atomically, and the agent's lock;
- ``runner``: one backup as a child process (:mod:`safehold.runs.child`, as the
  service's workers run theirs), its JSON log lines relayed with ``backup_guid``;
- ``standalone``: the long-running loop (ticks, retries, retention, signals);
- ``alerts``: a failing source's incident (told once through the file's ``alerts:``
  receivers, resolved at its next success), its ``ping:`` URLs, and the outbox in the
  state file that a background task sends with back-off;
- ``manual``: ``safehold agent run SOURCE``, the manual trigger;
- ``status``: ``safehold agent status``.

The agent sits beside the service in the layers and imports neither it nor the catalog
(an import contract says so): it holds no database credentials by construction. The
agent that takes its jobs from a service over HTTP (``--server URL``) is a later step.
"""

from __future__ import annotations

from safehold.agent.manual import run_now
from safehold.agent.standalone import AgentOptions, StandaloneAgent, run_agent
from safehold.agent.state import AgentState, default_agent_dir
from safehold.agent.status import agent_status

__all__ = [
    "AgentOptions",
    "AgentState",
    "StandaloneAgent",
    "agent_status",
    "default_agent_dir",
    "run_agent",
    "run_now",
]
