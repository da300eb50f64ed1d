"""The agent's state file: what it keeps, how it is written, and who may change it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from safehold.agent.state import (
    AgentAlreadyRunning,
    AgentState,
    RunResult,
    SourceState,
    agent_pid,
    hold_agent_lock,
    process_start,
)
from safehold.errors import UsageError

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def result(outcome: str, minute: int) -> RunResult:
    return RunResult(
        run_id=f"run-{minute}",
        trigger="schedule",
        outcome=outcome,
        started=T0.replace(minute=minute),
        ended=T0.replace(minute=minute, second=30),
        snapshot="ab" * 32 if outcome == "success" else "",
        slot=T0.replace(minute=minute),
    )


def test_an_entry_survives_a_round_trip_and_other_sources_are_kept(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "agent")
    assert state.load() == {}

    def record(entry: SourceState) -> None:
        entry.since = T0
        entry.last_result = entry.last_success = result("success", 1)

    state.update("db", record)
    state.update("files", lambda entry: setattr(entry, "since", T0.replace(hour=4)))
    again = AgentState(tmp_path / "agent").load()
    assert set(again) == {"db", "files"}
    assert again["db"].since == T0
    assert again["db"].last_success == result("success", 1)
    assert again["files"].since == T0.replace(hour=4) and again["files"].last_result is None
    # Written whole, private, and no temporary file left behind.
    data = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert data["version"] == 1 and set(data["sources"]) == {"db", "files"}
    assert os.stat(tmp_path / "agent" / "agent.json").st_mode & 0o777 == 0o600
    assert sorted(p.name for p in (tmp_path / "agent").iterdir()) == ["agent.json", "state.lock"]


def test_updates_from_several_processes_are_all_kept(tmp_path: Path) -> None:
    """Each change is a read-modify-write under the lock: none is lost to another's."""
    code = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from pathlib import Path\n"
        "from safehold.agent.state import AgentState\n"
        "state = AgentState(Path(sys.argv[1]))\n"
        "for i in range(20):\n"
        "    state.update(f'{sys.argv[2]}-{i}', lambda e: setattr(e, 'since', datetime.now(UTC)))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), name]) for name in "abc"]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert len(AgentState(tmp_path).load()) == 60


def test_min_interval_counts_from_the_run_going_else_the_last_success() -> None:
    entry = SourceState(last_result=result("failed", 9), last_success=result("success", 5))
    assert entry.last_start == T0.replace(minute=5)  # a failed run does not count
    me = {"pid": os.getpid(), "since": process_start(os.getpid()), "started": T0.isoformat()}
    entry.running["now"] = {**me, "started": T0.replace(minute=20).isoformat()}
    assert entry.last_start == T0.replace(minute=20)


def test_a_run_whose_process_is_gone_is_not_live() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    gone = int(done.stdout)
    mine = os.getpid()
    entry = SourceState(
        running={
            "dead": {"pid": gone, "started": T0.isoformat()},
            "reused": {"pid": mine, "since": "1", "started": T0.isoformat()},  # not this start
            "live": {"pid": mine, "since": process_start(mine), "started": T0.isoformat()},
        }
    )
    assert set(entry.live_runs()) == {"live"}


def test_a_damaged_or_foreign_state_file_is_refused_with_a_hint(tmp_path: Path) -> None:
    state = AgentState(tmp_path)
    (tmp_path / "agent.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot be read") as caught:
        state.load()
    assert caught.value.hint and "move it aside" in caught.value.hint
    (tmp_path / "agent.json").write_text('{"version": 99, "sources": {}}')
    with pytest.raises(UsageError, match="version 99"):
        state.load()


def test_one_agent_per_state_folder(tmp_path: Path) -> None:
    assert agent_pid(tmp_path) is None
    with hold_agent_lock(tmp_path):
        code = (
            "import sys; from pathlib import Path\n"
            "from safehold.agent.state import hold_agent_lock, agent_pid\n"
            "print(agent_pid(Path(sys.argv[1])))\n"
            "with hold_agent_lock(Path(sys.argv[1])): pass\n"
        )
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                               capture_output=True, text=True)  # fmt: skip
        assert other.stdout.strip() == str(os.getpid())
        assert "AgentAlreadyRunning" in other.stderr and "already runs" in other.stderr
    assert agent_pid(tmp_path) is None
    with hold_agent_lock(tmp_path):  # free again once the holder left
        pass
    assert issubclass(AgentAlreadyRunning, Exception)
