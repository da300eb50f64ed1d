"""``safehold agent --config FILE`` as service-backup's users run it: real processes, a
real local repository, a fast clock (SAFEHOLD_TEST_CLOCK), and the seed's behaviours:
cron schedules, exit_if_in_progress, the manual trigger, JSON logs with backup_guid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD
from tests.e2e.serving import Child, serve_env
from tests.e2e.waiting import wait_for

pytestmark = pytest.mark.slow

# Thirty times faster: a one-minute schedule fires every two seconds.
SPEED = 30


class Agent(Child):
    """One ``safehold agent`` process, its log, and the commands beside it."""

    def __init__(self, tmp_path: Path, repo: str) -> None:
        self.config = tmp_path / "safehold.yaml"
        self.state_dir = tmp_path / "agent-state"
        self.log = tmp_path / "agent.log"
        self.repo = repo
        self.env = serve_env(tmp_path, SAFEHOLD_TEST_CLOCK=f"{time.time()}:{SPEED}")
        self.proc = None

    def base(self) -> list[str]:
        return ["--config", str(self.config), "--state-dir", str(self.state_dir)]

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "safehold", "agent", *self.base(), "--tick", "0.05",
                 "--stop-grace", "5"],
                env=self.env, stdout=out, stderr=out,
            )  # fmt: skip

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "safehold", "agent", *args, *self.base()],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def status(self) -> dict[str, dict[str, Any]]:
        done = self.run("status", "--json")
        assert done.returncode == 0, done.stderr
        return {s["source"]: s for s in json.loads(done.stdout)["sources"]}

    def lines(self) -> list[dict[str, Any]]:
        text = self.log.read_text() if self.log.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def events(self, event: str, source: str | None = None) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines()
            if line["event"] == event and (source is None or line.get("source") == source)
        ]

    def snapshots(self) -> dict[str, int]:
        done = subprocess.run(
            [sys.executable, "-m", "safehold", "-r", self.repo, "--json", "snapshots"],
            env={**self.env, "SAFEHOLD_PASSWORD": PASSWORD.decode()},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        counts: dict[str, int] = {}
        for snap in json.loads(done.stdout):
            counts[snap["source_name"]] = counts.get(snap["source_name"], 0) + 1
        return counts


@pytest.fixture
def agent(tmp_path: Path, cli_repo: str) -> Iterator[Agent]:
    found = Agent(tmp_path, cli_repo)
    try:
        yield found
    finally:
        found.kill()


def test_two_sources_on_their_slots_and_a_restart_catches_up_once(
    agent: Agent, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "dump.rdb").write_bytes(os.urandom(4096))
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "notes.txt").write_text("notes\n")
    ident = tmp_path / "ident.sh"
    ident.write_text("#!/bin/sh\necho service-instance-42\n")
    ident.chmod(0o755)
    # service-backup's own keys: source_folder, cron_schedule (six fields, seconds first),
    # service_identifier_executable.
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        "  redis:\n"
        f"    source_folder: {tmp_path / 'redis'}\n"
        '    cron_schedule: "0 * * * * *"\n'
        f"    service_identifier_executable: {ident}\n"
        "  files:\n"
        f"    source_folder: {tmp_path / 'files'}\n"
        '    cron_schedule: "* * * * *"\n'
        "    start_window: 5s\n"  # a slot unseen 5 s (of schedule time) is missed
        "    retention: {keep_last: 2}\n"
    )
    agent.start()

    def successes(source: str) -> int:
        return sum(e["outcome"] == "success" for e in agent.events("backup.finished", source))

    def pruned() -> bool:
        return any(e["removed"] for e in agent.events("retention.finished", "files"))

    wait_for("two backups of redis", lambda: successes("redis") >= 2)
    wait_for("a third backup of files, and its retention", pruned)
    assert agent.stop() == 0
    counts = agent.snapshots()
    # Every success is a snapshot, less those the retention of 'files' removed (keep the
    # last two); a backup the stop interrupted may have saved one more.
    removed = sum(e["removed"] for e in agent.events("retention.finished", "files"))
    assert counts["redis"] - successes("redis") in (0, 1)
    assert counts["files"] - (successes("files") - removed) in (0, 1)
    assert 2 <= counts["files"] <= 4
    # Each backup's lines carry its backup_guid, the source, the plan and the identifier.
    started = agent.events("backup.started", "redis")
    guid = started[0]["backup_guid"]
    mine = [line for line in agent.lines() if line.get("backup_guid") == guid]
    assert {"backup.started", "run.started", "backup.saved", "backup.finished"} <= {
        line["event"] for line in mine
    }
    assert all(line["source"] == "redis" and line["plan"] == "default/redis" for line in mine)
    finished = [line for line in mine if line["event"] == "backup.finished"]
    assert finished[0]["identifier"] == "service-instance-42"
    # Later runs' lines carry it from their first, before their child has said it again.
    assert started[1]["identifier"] == "service-instance-42"
    assert agent.events("retention.finished", "files")
    # The state file has each source's last result and success.
    status = agent.status()
    assert status["redis"]["last_success"]["snapshot"]
    # (a backup going when the agent stopped was interrupted)
    assert status["files"]["last_result"]["outcome"] in ("success", "interrupted")
    assert status["files"]["last_success"]["snapshot"]
    assert status["redis"]["schedule"] == "cron 0 * * * * *"
    assert not status["redis"]["running"]
    decided = {name: status[name]["decided_until"] for name in ("redis", "files")}

    # Down for about five slots: after the restart one run makes up for them, not five.
    before = len(agent.lines())
    time.sleep(10)
    agent.start()

    def ran_after(source: str) -> bool:
        return any(
            e["event"] == "backup.finished" and e["source"] == source
            for e in agent.lines()[before:]
        )

    wait_for("a run of each after the restart", lambda: ran_after("redis") and ran_after("files"))
    assert agent.stop() == 0
    after = agent.lines()[before:]
    for source in ("redis", "files"):
        # The first look decides the downtime's slots: all missed but one, which runs (as
        # a catch-up, or as the slot still in its start window when the agent came back:
        # a start window of 5 s makes that one rare for 'files').
        missed = [e for e in after if e["event"] == "slots.missed" and e["source"] == source]
        assert missed and missed[0]["count"] >= 3, missed
        newest = datetime.fromisoformat(missed[0]["last"]) + timedelta(minutes=1)
        made_up = [
            e
            for e in after
            if e["event"] == "backup.started"
            and e["source"] == source
            and datetime.fromisoformat(e["slot"]) <= newest
        ]
        assert len(made_up) == 1, made_up
        assert made_up[0]["trigger"] in ("catch_up", "schedule")
    # No slot decided before the stop, and no slot twice.
    runs = [(e["source"], e["slot"]) for e in after if e["event"] == "backup.started"]
    assert all(slot > decided[source] for source, slot in runs), (decided, runs)
    assert len(runs) == len(set(runs))


def test_in_progress_manual_run_retries_and_sigterm(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("a\n")
    pid_file = tmp_path / "hook.pid"
    slow = tmp_path / "slow.sh"
    slow.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 60\n")
    slow.chmod(0o755)
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/bin/sh\necho 'redis-cli: connection refused' >&2\nexit 1\n")
    broken.chmod(0o755)
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        "  slow:\n"
        f"    source_folder: {tmp_path / 'files'}\n"
        f"    source_executable: {slow}\n"
        '    cron_schedule: "* * * * *"\n'
        "    exit_if_in_progress: true\n"
        "  broken:\n"
        f"    source_folder: {tmp_path / 'files'}\n"
        f"    source_executable: {broken}\n"
        '    cron_schedule: "0 0 * * *"\n'  # daily: only the manual trigger runs it
        "    retries: 1\n"
        "    retry_delay: 1s\n"
        "    on_overlap: skip\n"
    )
    agent.start()
    wait_for(
        "the slow backup's hook", lambda: pid_file.exists() and agent.status()["slow"]["running"]
    )
    hook_pid = int(pid_file.read_text())

    # The manual trigger, while the agent's run is going: exit 9, as the seed says.
    second = agent.run("run", "slow")
    assert second.returncode == 9, second.stderr
    assert "already in progress" in second.stderr
    refused = [json.loads(line) for line in second.stderr.splitlines() if line.startswith("{")]
    (line,) = [e for e in refused if e["event"] == "backup.in_progress"]
    assert line["backup_guid"] and line["source"] == "slow"
    assert line["message"].startswith("Backup currently in progress, exiting.")
    # The agent skips the slots that come meanwhile, and says why.
    wait_for("a skipped slot", lambda: bool(agent.events("slot.skipped", "slow")))
    (skipped, *_) = agent.events("slot.skipped", "slow")
    assert skipped["reason"].startswith("overlap: the previous run is still going")
    assert skipped["message"].startswith("Backup currently in progress, exiting.")

    # A manual run of a failing source: its failure logged as JSON with its backup_guid.
    failed = agent.run("run", "broken")
    assert failed.returncode == 6, failed.stderr
    assert "connection refused" in failed.stderr

    # SIGTERM: the running backup is interrupted (its hook too), the agent exits cleanly.
    stopped = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - stopped < 20  # the grace, not the hook's 60 seconds
    with pytest.raises(ProcessLookupError):
        os.kill(hook_pid, 0)
    status = agent.status()
    assert status["slow"]["last_result"]["outcome"] == "interrupted"
    assert not status["slow"]["running"]
    assert status["broken"]["last_result"]["outcome"] == "failed"
    assert agent.events("agent.stopped")


def test_retries_timeouts_and_a_queue_behind_a_long_run(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    broken = tmp_path / "broken.sh"
    broken.write_text("#!/bin/sh\necho 'redis-cli: connection refused' >&2\nexit 1\n")
    broken.chmod(0o755)
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(0o755)
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        "  broken:\n"
        f"    source_folder: {tmp_path / 'files'}\n"
        f"    source_executable: {broken}\n"
        '    cron_schedule: "*/5 * * * *"\n'  # every ten seconds at this speed
        "    retries: 2\n"
        "    retry_delay: 0.5s\n"
        "  hangs:\n"
        f"    source_folder: {tmp_path / 'files'}\n"
        f"    source_executable: {hang}\n"
        '    cron_schedule: "*/5 * * * *"\n'
        "    timeout: 1s\n"
        "  queued:\n"
        f"    source_folder: {tmp_path / 'files'}\n"
        f"    source_executable: {slow}\n"
        '    cron_schedule: "* * * * *"\n'  # every two seconds, each run five
    )
    agent.start()
    wait_for("the retries to give up", lambda: bool(agent.events("backup.gave_up")))
    wait_for("a timed-out run", lambda: bool(agent.events("backup.finished", "hangs")))
    wait_for("two runs behind others", lambda: len(agent.events("backup.queued", "queued")) >= 2)

    def skipped_behind_one_waiting() -> bool:
        return any(
            (e["reason"] or "").startswith("overlap: a run is already queued")
            for e in agent.events("slot.skipped", "queued")
        )

    wait_for("a slot skipped while one waits", skipped_behind_one_waiting)
    assert agent.stop() == 0
    # The source's timeout: the run is stopped (its hook too) and recorded as timed out.
    (timed_out, *_) = agent.events("backup.finished", "hangs")
    assert timed_out["outcome"] == "timeout" and "timed out after 1 s" in timed_out["error"]
    # A slot that comes while a run goes waits behind it (on_overlap: queue): one at a
    # time, the next starting when the one before has ended.
    lines = [e for e in agent.lines() if e.get("source") == "queued"]
    going = 0
    for line in lines:
        going += {"backup.started": 1, "backup.finished": -1}.get(line["event"], 0)
        assert going <= 1

    finished = agent.events("backup.finished", "broken")[:3]
    assert [e["attempt"] for e in finished] == [1, 2, 3]
    assert all(e["outcome"] == "failed" and e["level"] == "error" for e in finished)
    assert all("connection refused" in e["error"] for e in finished)
    # Each attempt is a run of its own, with its own backup_guid; the retries say so.
    assert len({e["backup_guid"] for e in finished}) == 3
    started = agent.events("backup.started", "broken")[:3]
    assert [e["trigger"] for e in started][1:] == ["retry", "retry"]
    retrying = agent.events("backup.retrying", "broken")
    assert [e["delay_s"] for e in retrying[:2]] == [0.5, 1.0]
    assert all(e["backup_guid"] for e in retrying)
    assert PASSWORD.decode() not in agent.log.read_text()


def test_one_agent_per_folder_a_file_without_schedules_and_a_reload(
    agent: Agent, tmp_path: Path
) -> None:
    (tmp_path / "files").mkdir()
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        f"sources:\n  files: {{source_folder: {tmp_path / 'files'}}}\n"
    )
    done = agent.run()
    assert done.returncode == 2 and "no scheduled source" in done.stderr
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        f"sources:\n  files: {{source_folder: {tmp_path / 'files'}, schedule: '@daily'}}\n"
    )
    agent.start()
    wait_for("the agent to start", lambda: bool(agent.events("agent.started")))
    done = agent.run()
    assert done.returncode == 2 and "an agent already runs" in done.stderr
    assert agent.run("status").stdout.startswith("agent: running, pid ")
    # The manual trigger beside the agent; --json prints its result.
    manual = agent.run("run", "files", "--json")
    assert manual.returncode == 0, manual.stderr
    result = json.loads(manual.stdout)
    assert result["outcome"] == "success" and result["trigger"] == "manual"
    assert agent.snapshots() == {"files": 1}
    assert agent.status()["files"]["last_success"]["run_id"] == result["run_id"]
    # SIGHUP reads the file again: a source added runs without a restart.
    agent.config.write_text(
        agent.config.read_text()
        + f"  added: {{source_folder: {tmp_path / 'files'}, cron_schedule: '* * * * *'}}\n"
    )
    assert agent.proc is not None
    agent.proc.send_signal(signal.SIGHUP)
    wait_for("the added source's backup", lambda: bool(agent.events("backup.finished", "added")))
    assert agent.events("agent.reloaded")
    assert agent.stop() == 0
    status = agent.run("status")
    assert status.stdout.startswith("agent: not running")
    assert "added" in status.stdout and "@daily" in status.stdout


def test_a_killed_agent_s_run_is_recorded_lost_at_the_next_start(
    agent: Agent, tmp_path: Path
) -> None:
    (tmp_path / "files").mkdir()
    pids = tmp_path / "hook.pids"
    slow = tmp_path / "slow.sh"
    slow.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 60\n")
    slow.chmod(0o755)
    agent.config.write_text(
        f"repository: {{location: {agent.repo}, password_env: REPO_PW}}\n"
        "sources:\n"
        f"  slow: {{source_folder: {tmp_path / 'files'}, source_executable: {slow}, "
        "cron_schedule: '* * * * *', exit_if_in_progress: true}\n"
    )
    try:
        agent.start()
        wait_for("the slow backup's hook", lambda: pids.exists())
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait()
        agent.proc = None
        # The child backup died with the agent (its hook, in its own process group, may
        # run on): the state file's entry has no live process behind it any more.
        wait_for("the run to be dead", lambda: not agent.status()["slow"]["running"])
        agent.start()
        wait_for("the lost run noticed", lambda: bool(agent.events("backup.lost", "slow")))
        (lost,) = agent.events("backup.lost", "slow")
        assert lost["backup_guid"] == agent.events("backup.started", "slow")[0]["backup_guid"]
        wait_for("the next run", lambda: len(agent.events("backup.started", "slow")) >= 2)
        assert agent.stop() == 0
        assert agent.status()["slow"]["last_result"]["outcome"] == "interrupted"
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
