"""Which slots the standalone agent runs: the service's rule, fed from its state file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from safehold.agent.due import AgentPlan, agent_plans, due_slots
from safehold.agent.state import RunResult, SourceState
from safehold.config import load_config
from safehold.policy.slots import SlotState

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def plans(tmp_path: Path, extra: str = "") -> dict[str, AgentPlan]:
    (tmp_path / "files").mkdir(exist_ok=True)
    (tmp_path / "safehold.yaml").write_text(
        "sources:\n"
        f"  redis: {{source_folder: {tmp_path / 'files'}, cron_schedule: '0 * * * * *'"
        f"{extra}}}\n"
        f"  manual: {{source_folder: {tmp_path / 'files'}}}\n"
    )
    return agent_plans(load_config(str(tmp_path / "safehold.yaml")))


def test_only_scheduled_sources_are_plans_with_service_backup_names(tmp_path: Path) -> None:
    found = plans(tmp_path, ", exit_if_in_progress: true, retries: 2, retry_delay: 5s")
    assert list(found) == ["redis"]
    plan = found["redis"]
    assert plan.key == "default/redis" and plan.rules.on_overlap == "skip"
    assert plan.exit_if_in_progress and plan.retries == 2
    assert [plan.retry_in(n) for n in (1, 2, 3)] == [5.0, 10.0, 20.0]


def test_each_slot_runs_once_as_time_goes_on(tmp_path: Path) -> None:
    plan = plans(tmp_path)["redis"]
    entry = SourceState(since=T0)
    assert (
        due_slots(plan, entry, T0 + 30 * timedelta(seconds=1), running=False, waiting=0).since
        is None
    )
    ran = []
    now = T0
    for _ in range(10):  # a look every 20 seconds for 3 minutes and more
        now += timedelta(seconds=20)
        due = due_slots(plan, entry, now, running=False, waiting=0)
        if due.since is not None:
            entry.since = due.since
        ran += [d.slot_at for d in due.decisions if d.queues_a_run]
        assert due.next_slot > now
    assert ran == [T0 + MINUTE, T0 + 2 * MINUTE, T0 + 3 * MINUTE]


def test_after_a_downtime_one_catch_up_and_the_rest_missed(tmp_path: Path) -> None:
    plan = plans(tmp_path, ", start_window: 10s")["redis"]
    entry = SourceState(since=T0)
    due = due_slots(plan, entry, T0 + 10 * MINUTE + timedelta(seconds=30), running=False, waiting=0)
    states = [d.state for d in due.decisions]
    assert states == [SlotState.MISSED] * 9 + [SlotState.QUEUED]
    assert due.decisions[-1].trigger == "catch_up"
    assert due.since == T0 + 10 * MINUTE
    # With catch_up: none the downtime is only recorded.
    quiet = plans(tmp_path, ", start_window: 10s, catch_up: none")["redis"]
    due = due_slots(
        quiet, entry, T0 + 10 * MINUTE + timedelta(seconds=30), running=False, waiting=0
    )
    assert all(d.state is SlotState.MISSED for d in due.decisions)


def test_overlap_skips_with_exit_if_in_progress_and_queues_one_without(tmp_path: Path) -> None:
    entry = SourceState(since=T0)
    now = T0 + MINUTE
    skip = plans(tmp_path, ", exit_if_in_progress: true")["redis"]
    (decision,) = due_slots(skip, entry, now, running=True, waiting=0).decisions
    assert decision.state is SlotState.SKIPPED and decision.reason is not None
    assert decision.reason.startswith("overlap: the previous run is still going")
    queue = plans(tmp_path)["redis"]
    (decision,) = due_slots(queue, entry, now, running=True, waiting=0).decisions
    assert decision.queues_a_run
    (decision,) = due_slots(queue, entry, now, running=True, waiting=1).decisions
    assert decision.state is SlotState.SKIPPED  # one waits already


def test_paused_and_min_interval(tmp_path: Path) -> None:
    now = T0 + MINUTE
    paused = plans(tmp_path, ", paused: true")["redis"]
    (decision,) = due_slots(paused, SourceState(since=T0), now, running=False, waiting=0).decisions
    assert (decision.state, decision.reason) == (SlotState.SKIPPED, "paused")
    spaced = plans(tmp_path, ", min_interval: 5m")["redis"]
    success = RunResult(run_id="r", trigger="manual", outcome="success", started=T0)
    entry = SourceState(since=T0, last_success=success)
    (decision,) = due_slots(spaced, entry, now, running=False, waiting=0).decisions
    assert decision.state is SlotState.SKIPPED and (decision.reason or "").startswith(
        "min_interval"
    )


def test_a_long_downtime_is_decided_in_bounded_work(tmp_path: Path) -> None:
    plan = plans(tmp_path)["redis"]
    due = due_slots(plan, SourceState(since=T0), T0 + timedelta(days=30), running=False, waiting=0)
    assert due.left_out and len(due.decisions) == 1000
    assert sum(d.queues_a_run for d in due.decisions) == 1
