"""The standalone agent's alerts and pings, as service-backup's users run it: a real
``safehold agent`` process on a fast clock, a source whose hook fails until told
otherwise, aiosmtpd for the e-mail and a local HTTP receiver for the signed webhook and
the pings; and a receiver that is down."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safehold.notify import sign
from tests.e2e.test_agent_standalone import Agent
from tests.e2e.waiting import wait_for
from tests.notify_receivers import (
    SMTP_PASSWORD,
    SMTP_USER,
    HttpReceiver,
    SmtpServer,
    free_port,
    http_receiver,
    smtp_server,
)

__all__ = ["http_receiver", "smtp_server"]  # fixtures

pytestmark = pytest.mark.slow

HOOK_SECRET = "hook-secret-for-agent-tests"
PING_TOKEN = "5f1b6c1e-0d7a-4b8e-9c3a-agent1234567"


@pytest.fixture
def agent(tmp_path: Path, cli_repo: str) -> Iterator[Agent]:
    found = Agent(tmp_path, cli_repo)
    found.env.update(SMTP_PW=SMTP_PASSWORD, HOOK_SECRET=HOOK_SECRET)
    try:
        yield found
    finally:
        found.kill()


def _config(agent: Agent, tmp_path: Path, smtp_port: int, http: HttpReceiver) -> Path:
    """A failing source (until ``flag`` exists), e-mail and webhook receivers, pings."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("a\n")
    flag = tmp_path / "healthy"
    script = tmp_path / "dump.sh"
    script.write_text(
        f"#!/bin/sh\n[ -e {flag} ] && exit 0\n"
        "echo 'pg_dump: connection to server failed: Connection refused' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    ping = f"{http.base}/ping/{PING_TOKEN}"
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        "alerts:\n"
        "  retry_delay: 1s\n"  # thirty times faster: a thirtieth of a second, doubled
        "  max_attempts: 3\n"
        "  receivers:\n"
        "    ops:\n"
        "      projects: [shop]\n"
        "      channels:\n"
        "        - type: email\n"
        "          host: 127.0.0.1\n"
        f"          port: {smtp_port}\n"
        "          tls: none\n"
        f"          username: {SMTP_USER}\n"
        "          password: ${SMTP_PW}\n"
        "          from: safehold@example.org\n"
        "          to: [ops@example.org]\n"
        "        - type: webhook\n"
        f"          url: {http.base}/hook\n"
        "          secret: ${HOOK_SECRET}\n"
        "    others:\n"
        "      projects: [elsewhere]\n"  # not the source's project: never told
        "      channels:\n"
        f"        - {{type: webhook, url: '{http.base}/other'}}\n"
        "sources:\n"
        "  orders:\n"
        "    project: shop\n"
        f"    source_folder: {tmp_path / 'files'}\n"
        f"    source_executable: {script}\n"
        '    cron_schedule: "* * * * *"\n'  # every two seconds at this speed
        "    ping:\n"
        f"      start: {ping}/start\n"
        f"      success: {ping}\n"
        f"      fail: {ping}/fail\n"
    )
    return flag


def _failed(agent: Agent) -> list[dict[str, Any]]:
    return [e for e in agent.events("backup.finished", "orders") if e["outcome"] == "failed"]


def _hooks(http: HttpReceiver, path: str = "/hook") -> list[dict[str, Any]]:
    return [r.json() for r in list(http.requests) if r.path == path]


def test_a_failing_source_alerts_once_by_mail_and_webhook_and_resolves(
    agent: Agent, tmp_path: Path, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:

    flag = _config(agent, tmp_path, smtp_server.port, http_receiver)
    agent.start()
    wait_for("the alert by e-mail", lambda: len(smtp_server.mails) >= 1)
    wait_for("the alert by webhook", lambda: len(_hooks(http_receiver)) >= 1)
    first = _failed(agent)[0]
    run_id = first["backup_guid"]

    # The e-mail: the service's message, naming project, plan, run, phase, error, next step.
    mail = smtp_server.mails[0]
    assert mail["Subject"] == "[safehold] ALERT: backup failed: shop/orders"
    assert smtp_server.logins[0] == SMTP_USER
    text, html = smtp_server.text_and_html(0)
    assert f"run id:     {run_id}" in text
    assert "project:    shop" in text and "plan:       orders" in text
    assert "Connection refused" in text
    assert "safehold agent run orders --config FILE" in text
    assert f"<td class='run-id' style='white-space:pre-wrap'>{run_id}</td>" in html
    phase = text.split("phase:", 1)[1].split("\n", 1)[0].strip()
    assert phase and phase != "-"

    # The webhook: signed with the shared secret, the same fields.
    (request,) = [r for r in http_receiver.requests if r.path == "/hook"]
    stamp = request.headers["X-Safehold-Timestamp"]
    assert request.headers["X-Safehold-Signature"] == sign(HOOK_SECRET, stamp, request.body)
    opened = request.json()
    assert opened["event"] == "opened" and opened["run_id"] == run_id
    assert opened["project"] == "shop" and opened["plan"] == "orders"
    assert opened["phase"] == phase and "Connection refused" in opened["error"]

    # More failures, and a restart between them: no second message (one per incident).
    wait_for("two more failures", lambda: len(_failed(agent)) >= 3)
    assert agent.stop() == 0
    status = agent.run("status", "--json")
    assert status.returncode == 0, status.stderr
    (incident,) = json.loads(status.stdout)["open_incidents"]
    assert incident["source"] == "orders" and incident["run_id"] == run_id
    shown = agent.run("status")
    assert "open incidents: 1" in shown.stdout and run_id in shown.stdout
    failures = len(_failed(agent))
    agent.start()
    wait_for("a failure after the restart", lambda: len(_failed(agent)) > failures + 1)
    assert len(smtp_server.mails) == 1
    assert [h["event"] for h in _hooks(http_receiver)] == ["opened"]

    # The hook succeeds: one resolved message through each channel, and the success ping.
    flag.touch()
    wait_for("the resolved e-mail", lambda: len(smtp_server.mails) >= 2)
    wait_for("the resolved webhook", lambda: len(_hooks(http_receiver)) >= 2)
    wait_for("the success ping", lambda: f"/ping/{PING_TOKEN}" in http_receiver.paths())
    assert smtp_server.mails[1]["Subject"] == "[safehold] RESOLVED: backup failed: shop/orders"
    resolved = _hooks(http_receiver)[1]
    assert resolved["event"] == "resolved" and resolved["run_id"] == run_id
    assert resolved["resolved_at"]
    wait_for("another success", lambda: len(agent.events("backup.finished", "orders"))
             > len(_failed(agent)) + 1)  # fmt: skip
    assert agent.stop() == 0
    assert len(smtp_server.mails) == 2 and len(_hooks(http_receiver)) == 2
    assert _hooks(http_receiver, "/other") == []  # another project's receiver
    assert json.loads(agent.run("status", "--json").stdout)["open_incidents"] == []

    # Pings: at each run's start, and its end as it went.
    paths = [p.removeprefix(f"/ping/{PING_TOKEN}") for p in http_receiver.paths()
             if p.startswith("/ping/")]  # fmt: skip
    assert paths.count("/start") >= paths.count("/fail") + 1 >= 5
    assert paths[0] == "/start" and "" in paths
    assert paths.index("/fail") < paths.index("")
    # The log says what went, and no secret.
    sent = agent.events("alert.sent", "orders")
    assert {e["what"] for e in sent} >= {"message opened", "message resolved", "ping start"}
    log = agent.log.read_text()
    for secret in (SMTP_PASSWORD, HOOK_SECRET, PING_TOKEN):
        assert secret not in log


def test_a_receiver_that_is_down_neither_stops_the_runs_nor_is_forgotten(
    agent: Agent, tmp_path: Path, http_receiver: HttpReceiver
) -> None:
    down = free_port()  # nothing listens there
    _config(agent, tmp_path, down, http_receiver)
    agent.start()
    wait_for("the webhook's alert", lambda: len(_hooks(http_receiver)) >= 1)
    wait_for("the e-mail given up", lambda: bool(agent.events("alert.gave_up", "orders")))
    # The runs go on at their slots meanwhile.
    wait_for("more runs", lambda: len(_failed(agent)) >= 3)
    assert agent.stop() == 0

    failures = agent.events("alert.delivery_failed", "orders")
    assert [e["attempts"] for e in failures] == [1, 2]
    assert all(e["receiver"] == "ops" and e["channel"] == "email-1" for e in failures)
    assert all(f"127.0.0.1:{down}" in e["error"] for e in failures)
    assert failures[1]["retry_in_s"] == 2 * failures[0]["retry_in_s"]  # back-off
    (gave_up,) = agent.events("alert.gave_up", "orders")
    assert gave_up["attempts"] == 3 and gave_up["what"] == "message opened"

    # Kept in the state file, shown by status, with the attempts and why.
    status = json.loads(agent.run("status", "--json").stdout)
    (source,) = [s for s in status["sources"] if s["source"] == "orders"]
    (failed,) = source["deliveries_failed"]
    assert failed["attempts"] == 3 and failed["channel"] == "email-1"
    assert "sending failed" in failed["last_error"]
    assert "FAILED 1" in agent.run("status").stdout
    log = agent.log.read_text()
    assert SMTP_PASSWORD not in log and HOOK_SECRET not in log


def _logged(done: Any, event: str) -> list[dict[str, Any]]:
    """A manual run's log lines (JSON, on its standard error) of ``event``."""
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == event]


def _pings(http: HttpReceiver, token: str = PING_TOKEN) -> list[str]:
    return [
        p.removeprefix(f"/ping/{token}") for p in http.paths() if p.startswith(f"/ping/{token}")
    ]


def test_manual_runs_alert_once_ping_and_resolve_with_no_agent_running(
    agent: Agent, tmp_path: Path, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    flag = _config(agent, tmp_path, smtp_server.port, http_receiver)

    # A failing manual run: the alert and its pings are sent before it exits.
    first = agent.run("run", "orders")
    assert first.returncode == 6, first.stderr
    (ended,) = _logged(first, "backup.finished")
    run_id = ended["backup_guid"]
    assert ended["outcome"] == "failed"
    assert len(smtp_server.mails) == 1
    assert smtp_server.mails[0]["Subject"] == "[safehold] ALERT: backup failed: shop/orders"
    text, _ = smtp_server.text_and_html(0)
    assert f"run id:     {run_id}" in text and "Connection refused" in text
    (opened,) = _hooks(http_receiver)
    assert opened["event"] == "opened" and opened["run_id"] == run_id
    assert _pings(http_receiver) == ["/start", "/fail"]
    assert {e["what"] for e in _logged(first, "alert.sent")} == {
        "ping start", "ping fail", "message opened"}  # fmt: skip
    assert _logged(first, "alert.opened")[0]["run_id"] == run_id

    # A second failure: pings again, but no second message (one per incident).
    second = agent.run("run", "orders")
    assert second.returncode == 6, second.stderr
    assert len(smtp_server.mails) == 1 and len(_hooks(http_receiver)) == 1
    assert _pings(http_receiver) == ["/start", "/fail"] * 2
    (incident,) = json.loads(agent.run("status", "--json").stdout)["open_incidents"]
    assert incident["run_id"] == run_id  # the first failure's

    # A success resolves it, once, and pings success.
    flag.touch()
    third = agent.run("run", "orders")
    assert third.returncode == 0, third.stderr
    assert len(smtp_server.mails) == 2
    assert smtp_server.mails[1]["Subject"] == "[safehold] RESOLVED: backup failed: shop/orders"
    resolved = _hooks(http_receiver)[1]
    assert resolved["event"] == "resolved" and resolved["run_id"] == run_id
    assert _pings(http_receiver) == ["/start", "/fail"] * 2 + ["/start", ""]
    status = json.loads(agent.run("status", "--json").stdout)
    assert status["open_incidents"] == []
    (source,) = [s for s in status["sources"] if s["source"] == "orders"]
    assert source["deliveries_pending"] == 0 and source["deliveries_failed"] == []
    assert source["last_result"]["trigger"] == "manual"
    assert _hooks(http_receiver, "/other") == []
    for done in (first, second, third):
        for secret in (SMTP_PASSWORD, HOOK_SECRET, PING_TOKEN):
            assert secret not in done.stderr and secret not in done.stdout


def test_what_a_manual_run_could_not_send_the_agent_sends_and_both_share_the_state(
    agent: Agent, tmp_path: Path, smtp_server: SmtpServer, http_receiver: HttpReceiver
) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("a\n")
    flag = tmp_path / "healthy"
    script = tmp_path / "report.sh"
    script.write_text(f"#!/bin/sh\n[ -e {flag} ] && exit 0\necho 'report failed' >&2\nexit 1\n")
    script.chmod(0o755)
    ping = f"{http_receiver.base}/ping/{PING_TOKEN}"
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        "alerts:\n"
        "  retry_delay: 1s\n"
        "  receivers:\n"
        "    ops:\n"
        "      channels:\n"
        f"        - {{type: email, host: 127.0.0.1, port: {smtp_server.port}, tls: none,"
        f" username: {SMTP_USER}, password: '${{SMTP_PW}}', from: s@example.org,"
        " to: [ops@example.org]}\n"
        f"        - {{type: webhook, url: '{http_receiver.base}/hook',"
        " secret: '${HOOK_SECRET}'}\n"
        "sources:\n"
        "  orders:\n"  # the agent's own, every two seconds: its runs write agent.json too
        f"    source_folder: {tmp_path / 'files'}\n"
        '    cron_schedule: "* * * * *"\n'
        f"    ping: {{success: '{http_receiver.base}/ping/orders'}}\n"
        "  reports:\n"  # no schedule: only the manual trigger runs it
        f"    source_folder: {tmp_path / 'files'}\n"
        f"    source_executable: {script}\n"
        f"    ping: {{start: '{ping}/start', success: '{ping}', fail: '{ping}/fail'}}\n"
    )

    # With no agent running, the webhook and the pings refuse the manual run's deliveries
    # (the e-mail goes): they stay in the outbox with their back-off (a start ping refused
    # may be tried again before the run ends: the back-off is a thirtieth of a second).
    http_receiver.statuses = [404] * 20
    failed = agent.run("run", "reports")
    assert failed.returncode == 6, failed.stderr
    http_receiver.statuses.clear()
    assert len(smtp_server.mails) == 1
    assert set(_pings(http_receiver)) == {"/start", "/fail"} and _hooks(http_receiver)
    refused = _logged(failed, "alert.delivery_failed")
    assert {e["what"] for e in refused} == {"message opened", "ping fail", "ping start"}
    assert not _logged(failed, "alert.sent") or {
        e["what"] for e in _logged(failed, "alert.sent")} == {"message opened"}  # fmt: skip
    status = agent.status()["reports"]
    assert status["deliveries_pending"] == 3 and status["incident"] is not None
    before = len(http_receiver.requests)

    # The agent, started, sends them at their next try.
    agent.start()
    wait_for("the outbox sent", lambda: agent.status()["reports"]["deliveries_pending"] == 0)

    def later() -> HttpReceiver:  # what the receiver got since
        return HttpReceiver(0, http_receiver.requests[before:])

    assert _pings(later()) == ["/start", "/fail"]
    (hook,) = _hooks(later())
    assert hook == _hooks(http_receiver)[0] and hook["event"] == "opened"
    sent = agent.events("alert.sent", "reports")
    assert {e["what"] for e in sent} == {"message opened", "ping fail", "ping start"}
    assert all(e["attempts"] >= 2 for e in sent)

    # A manual run beside the agent's own runs: both change agent.json, neither loses the
    # other's changes, and the resolved message goes once (whoever sends it).
    wait_for("a run of orders", lambda: bool(agent.events("backup.finished", "orders")))
    flag.touch()
    fixed = agent.run("run", "reports")
    assert fixed.returncode == 0, fixed.stderr
    wait_for("the resolved e-mail", lambda: len(smtp_server.mails) >= 2)
    wait_for("the resolved webhook", lambda: len(_hooks(later())) >= 2)
    # The success ping may be the agent's to send (claimed before the manual run saw it).
    wait_for("the success ping", lambda: len(_pings(later())) >= 4)
    assert _pings(later()) == ["/start", "/fail", "/start", ""]
    ran = len(agent.events("backup.finished", "orders"))
    wait_for("two more runs of orders", lambda: len(agent.events("backup.finished", "orders"))
             >= ran + 2)  # fmt: skip
    assert agent.stop() == 0
    assert len(smtp_server.mails) == 2 and [h["event"] for h in _hooks(later())] == [
        "opened", "resolved"]  # fmt: skip
    state = json.loads((agent.state_dir / "agent.json").read_text())["sources"]
    assert state["reports"]["incident"] is None and state["reports"]["outbox"] == []
    assert state["reports"]["last_result"]["run_id"] == _logged(fixed, "backup.finished")[0][
        "backup_guid"]  # fmt: skip
    assert state["orders"]["last_success"] is not None and state["orders"]["since"]
    # The agent's own pings: each success's sent, or still in the outbox for its next start.
    orders = [p for p in http_receiver.paths() if p == "/ping/orders"]
    successes = [e for e in agent.events("backup.finished", "orders") if e["outcome"] == "success"]
    assert len(orders) + len(state["orders"]["outbox"]) == len(successes)
