"""How the agent reads a backup child's end and passes its lines on."""

from __future__ import annotations

from pathlib import Path

from safehold.agent.runner import RunRequest, outcome_of
from safehold.agent.state import AgentState
from safehold.clock import FakeClock
from safehold.runs.child import ChildResult, LogLine
from safehold.runs.events import LogEvent


def request(tmp_path: Path, sink: list[LogEvent]) -> RunRequest:
    return RunRequest(
        config_path=str(tmp_path / "safehold.yaml"),
        source="redis",
        plan="default/redis",
        state=AgentState(tmp_path),
        clock=FakeClock(),
        sink=sink.append,
        run_id="0b6f7c1e-0000-4000-8000-000000000001",
        trigger="schedule",
    )


def test_the_child_s_record_decides_and_a_missing_one_is_a_failure() -> None:
    saved = ChildResult(0, {"outcome": "success", "exit_code": 0, "snapshot": "ab"})
    assert outcome_of(saved) == ("success", 0, "")
    busy = ChildResult(9, {"outcome": "in-progress", "exit_code": 9, "error": "a run of..."})
    assert outcome_of(busy) == ("in-progress", 9, "a run of...")
    crashed = ChildResult(1, None, stderr_tail=["Traceback", "MemoryError"])
    outcome, code, error = outcome_of(crashed)
    assert (outcome, code) == ("failed", 1)
    assert "exit code 1" in error and "MemoryError" in error
    killed = ChildResult(-9, None, killed=True)
    assert outcome_of(killed)[0] == "timeout"


def test_lines_carry_the_run_s_fields_and_teach_the_identifier(tmp_path: Path) -> None:
    lines: list[LogEvent] = []
    run = request(tmp_path, lines)
    run.relay(LogLine("info", "run.started", {"identifier": "", "source": "redis"}))
    assert "identifier" not in lines[-1].fields or not lines[-1].fields["identifier"]
    run.relay(LogLine("info", "hook.finished", {"identifier": "instance-42", "phase": "backup"}))
    run.relay(LogLine("info", "safehold: error: something plain"))
    run.relay(LogLine("info", "   "))  # blank lines are dropped
    run.log("info", "backup.finished", outcome="success")
    assert [e.event for e in lines] == [
        "run.started",
        "hook.finished",
        "run.output",
        "backup.finished",
    ]
    for event in lines:
        assert event.fields["backup_guid"] == event.fields["run_id"] == run.run_id
        assert (event.fields["source"], event.fields["plan"]) == ("redis", "default/redis")
    assert lines[2].fields["message"] == "safehold: error: something plain"
    assert lines[3].fields["identifier"] == "instance-42"
