"""The standalone agent's incidents and outbox without a process: which outcomes open and
resolve, who is told, the back-off and the giving up, against a real HTTP receiver."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from safehold.agent.alerts import AgentAlerts
from safehold.agent.state import AgentState, RunResult, SourceState, process_start
from safehold.config import load_config
from tests.notify_receivers import HttpReceiver, free_port, http_receiver

__all__ = ["http_receiver"]  # a fixture

T0 = datetime(2026, 12, 7, 4, 0, tzinfo=UTC)


def _alerts(tmp_path: Path, hook: str) -> tuple[AgentAlerts, list[tuple[str, str, dict[str, Any]]]]:
    (tmp_path / "files").mkdir(exist_ok=True)
    path = tmp_path / "safehold.yaml"
    path.write_text(
        f"repository: {{location: {tmp_path / 'repo'}, password: x}}\n"
        "alerts:\n"
        "  retry_delay: 10s\n"
        "  max_attempts: 2\n"
        "  receivers:\n"
        "    shop-ops: {projects: [shop], channels: [{type: webhook, url: '"
        + hook
        + "/shop', secret: s3cr3t-value}]}\n"
        "    all-ops: {channels: [{type: webhook, url: '" + hook + "/all', name: hook}]}\n"
        "    web-ops: {projects: [web], channels: [{type: webhook, url: '" + hook + "/web'}]}\n"
        "sources:\n"
        f"  db: {{project: shop, type: directory, paths: [{tmp_path / 'files'}],"
        " schedule: '@hourly'}\n"
    )
    logged: list[tuple[str, str, dict[str, Any]]] = []
    alerts = AgentAlerts(
        AgentState(tmp_path / "state"),
        lambda level, event, **fields: logged.append((level, event, fields)),
    )
    alerts.configure(load_config(str(path)))
    return alerts, logged


def _run(outcome: str, n: int, error: str = "pg_dump: connection refused") -> RunResult:
    return RunResult(run_id=f"run-{n}", trigger="schedule", outcome=outcome,
                     started=T0, ended=T0, error=error if outcome != "success" else "",
                     phase="pre-backup" if outcome != "success" else "")  # fmt: skip


def test_a_timeout_opens_once_others_say_nothing_and_a_success_resolves(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    alerts, _ = _alerts(tmp_path, http_receiver.base)
    assert alerts.run_ended("db", "shop/db", _run("interrupted", 1), T0) == ""
    assert alerts.run_ended("db", "shop/db", _run("skipped", 2), T0) == ""
    assert alerts.run_ended("db", "shop/db", _run("success", 3), T0) == ""  # nothing open
    assert alerts.run_ended("db", "shop/db", _run("timeout", 4, ""), T0) == "opened"
    assert alerts.run_ended("db", "shop/db", _run("failed", 5), T0) == ""
    assert alerts.deliver_due(T0) == 2  # shop-ops and all-ops; not web-ops
    assert sorted(http_receiver.paths()) == ["/all", "/shop"]
    opened = http_receiver.requests[0].json()
    assert opened["run_id"] == "run-4" and opened["error"] == "the run timed out"
    assert "raise the source's timeout" in opened["hint"]
    assert opened["phase"] == "pre-backup" and opened["title"] == "backup failed"
    entry = alerts.state.load()["db"]
    assert entry.incident is not None and entry.outbox == []

    assert alerts.run_ended("db", "shop/db", _run("partial", 6), T0) == "resolved"
    assert alerts.deliver_due(T0) == 2
    resolved = http_receiver.requests[-1].json()
    assert resolved["event"] == "resolved" and resolved["run_id"] == "run-4"
    assert alerts.state.load()["db"].incident is None


def test_a_failed_delivery_backs_off_then_is_kept_as_failed(tmp_path: Path) -> None:
    alerts, logged = _alerts(tmp_path, f"http://127.0.0.1:{free_port()}")  # nobody there
    alerts.run_ended("db", "shop/db", _run("failed", 1), T0)
    assert alerts.deliver_due(T0) == 0
    failures = [f for _, e, f in logged if e == "alert.delivery_failed"]
    assert [f["attempts"] for f in failures] == [1, 1] and failures[0]["retry_in_s"] == 10
    assert alerts.deliver_due(T0 + timedelta(seconds=5)) == 0  # not due yet
    assert len([e for _, e, _ in logged if e == "alert.delivery_failed"]) == 2
    alerts.deliver_due(T0 + timedelta(seconds=10))
    gave_up = [f for level, e, f in logged if e == "alert.gave_up" and level == "error"]
    assert len(gave_up) == 2 and {f["attempts"] for f in gave_up} == {2}
    outbox = alerts.state.load()["db"].outbox
    assert [(o["state"], o["attempts"]) for o in outbox] == [("failed", 2)] * 2
    assert alerts.deliver_due(T0 + timedelta(days=1)) == 0  # failed for good: kept, not sent
    assert "s3cr3t-value" not in repr(logged) and "s3cr3t-value" not in repr(outbox)


def test_a_delivery_another_process_is_sending_is_left_to_it_until_it_is_gone(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    """The agent and a manual run share the outbox: what one claimed, the other skips."""
    alerts, _ = _alerts(tmp_path, http_receiver.base)
    alerts.run_ended("db", "shop/db", _run("failed", 1), T0)  # two: shop-ops and all-ops
    other = subprocess.Popen(["sleep", "60"])  # stands for the other process, sending
    try:
        held = {"pid": other.pid, "since": process_start(other.pid)}

        def claim(entry: SourceState) -> None:
            entry.outbox[0]["sending"] = held

        alerts.state.update("db", claim)
        assert alerts.deliver_due(T0) == 1
        assert len(http_receiver.requests) == 1
        (left,) = alerts.state.load()["db"].outbox
        assert left["sending"] == held and left["attempts"] == 0
    finally:
        other.kill()
        other.wait()
    # Its process is gone (killed while sending): the claim holds no more.
    assert alerts.deliver_due(T0) == 1
    assert sorted(http_receiver.paths()) == ["/all", "/shop"]
    assert alerts.state.load()["db"].outbox == []


def test_a_failed_delivery_drops_its_claim_and_one_source_can_be_sent_alone(
    tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    alerts, _ = _alerts(tmp_path, http_receiver.base)
    alerts.run_ended("db", "shop/db", _run("failed", 1), T0)
    alerts.run_ended("web", "web/site", _run("failed", 2), T0)  # web-ops and all-ops
    http_receiver.statuses = [404]  # the first delivery is refused
    assert alerts.deliver_due(T0, source="web") == 1
    assert len(http_receiver.requests) == 2
    assert all(r.json()["project"] == "web" for r in http_receiver.requests)
    entries = alerts.state.load()
    (refused,) = entries["web"].outbox
    assert refused["attempts"] == 1 and "sending" not in refused
    assert len(entries["db"].outbox) == 2  # not asked for: still there
    assert alerts.deliver_due(T0 + timedelta(seconds=10)) == 3
