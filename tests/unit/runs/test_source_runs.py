"""Running configured sources with their hooks: order, guarantees, outcomes, records, logs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from safehold.app import source_job
from safehold.config import load_config
from safehold.errors import ExitCode
from safehold.repository.repository import Repository
from safehold.runs.events import LogEvent
from safehold.runs.job import SourceJob
from safehold.runs.source_run import run_source_backup, run_source_restore
from safehold.runs.state import run_lock
from safehold.sources.base import RestoreRequest, SnapshotFiles, TreeContent

PHASE_LOGGER = 'echo "$SAFEHOLD_PHASE $SAFEHOLD_OUTCOME $SAFEHOLD_SNAPSHOT" >> "$HOOK_LOG"'


class Setup:
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp_path
        self.log = tmp_path / "hooks.log"
        self.state = tmp_path / "state"
        self.data = tmp_path / "data"
        self.data.mkdir()
        (self.data / "a.txt").write_text("alpha\n")
        monkeypatch.setenv("HOOK_LOG", str(self.log))
        self.events: list[LogEvent] = []

    def job(
        self, source_yaml: str, name: str = "src", env: dict[str, str] | None = None
    ) -> SourceJob:
        path = self.tmp / "safehold.yaml"
        path.write_text("sources:\n  " + name + ":\n" + _indent(source_yaml, 4))
        return source_job(load_config(str(path), env=env), name)

    def hooks(self, **override: str) -> str:
        """A hooks: block logging every backup phase; ``override`` replaces phases."""
        lines = ["hooks:"]
        for phase in (
            "pre-backup-lock",
            "pre-backup-check",
            "backup",
            "backup-cleanup",
            "post-backup-unlock",
            "pre-restore-lock",
            "restore",
            "restore-cleanup",
            "post-restore-unlock",
        ):
            run = override.get(phase.replace("-", "_"), PHASE_LOGGER)
            lines.append(f"  {phase}: {{run: {json.dumps(run)}, shell: true, timeout: 20}}")
        return "\n".join(lines) + "\n"

    def directory(self, extra: str = "", **hooks: str) -> SourceJob:
        return self.job(f"type: directory\npaths: [{self.data}]\n{self.hooks(**hooks)}{extra}")

    def phases(self) -> list[str]:
        return [line.split()[0] for line in self.log.read_text().splitlines()]

    def backup(self, repo: Repository, job: SourceJob) -> Any:
        return run_source_backup(repo, job, state_dir=self.state, sink=self.events.append)


def _indent(text: str, n: int) -> str:
    return "".join(" " * n + line + "\n" for line in text.splitlines())


@pytest.fixture
def s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    return Setup(tmp_path, monkeypatch)


BACKUP_ORDER = [
    "pre-backup-lock",
    "pre-backup-check",
    "backup",
    "backup-cleanup",
    "post-backup-unlock",
]


def test_hooks_run_in_order_and_the_run_is_recorded(s: Setup, mem_repo: Repository) -> None:
    rec = s.backup(mem_repo, s.directory("tags: [nightly]\nidentifier: svc-7\n"))
    assert rec.outcome == "success" and rec.exit_code == 0, rec.error
    assert s.phases() == BACKUP_ORDER
    # Cleanup and unlock are told the outcome so far and the snapshot saved.
    lines = s.log.read_text().splitlines()
    assert lines[0].strip() == "pre-backup-lock running"
    assert lines[-1] == f"post-backup-unlock success {rec.snapshot}"
    (snap,) = mem_repo.list_snapshots()
    assert snap.id == rec.snapshot and snap.source_name == "src" and snap.source == "directory"
    assert snap.tags == ["nightly"]
    saved = json.loads((s.state / "runs" / "src" / f"{rec.run_id}.json").read_text())
    assert saved["outcome"] == "success" and saved["snapshot"] == snap.id
    assert saved["identifier"] == "svc-7"
    assert [p["phase"] for p in saved["phases"]] == BACKUP_ORDER
    assert all(p["exit_code"] == 0 and p["duration_s"] >= 0 for p in saved["phases"])


def test_a_failed_backup_hook_still_cleans_up_and_unlocks(s: Setup, mem_repo: Repository) -> None:
    rec = s.backup(mem_repo, s.directory(backup='echo "disk full" >&2; exit 5'))
    assert rec.outcome == "failed" and rec.exit_code == ExitCode.SOURCE
    assert "the backup hook exited with status 5: disk full" in rec.error
    assert s.phases() == [
        "pre-backup-lock",
        "pre-backup-check",
        "backup-cleanup",
        "post-backup-unlock",
    ]
    assert mem_repo.list_snapshots() == []
    failed = next(p for p in rec.phases if p["phase"] == "backup")
    assert failed["exit_code"] == 5 and failed["stderr"] == "disk full\n"


def test_a_failed_lock_hook_still_unlocks(s: Setup, mem_repo: Repository) -> None:
    rec = s.backup(mem_repo, s.directory(pre_backup_lock="exit 1"))
    assert rec.outcome == "failed"
    assert s.phases() == ["backup-cleanup", "post-backup-unlock"]


def test_a_failing_source_still_unlocks(s: Setup, mem_repo: Repository) -> None:
    job = s.job("type: command\ncommand: sh -c 'echo partial; exit 4'\n" + s.hooks())
    rec = s.backup(mem_repo, job)
    assert rec.outcome == "failed" and rec.exit_code == ExitCode.SOURCE
    assert "exited with status 4" in rec.error
    assert s.phases() == BACKUP_ORDER
    assert mem_repo.list_snapshots() == []


def test_a_hook_timeout_still_unlocks(s: Setup, mem_repo: Repository) -> None:
    job = s.job(
        f"type: directory\npaths: [{s.data}]\n"
        "hooks:\n"
        "  pre-backup-lock: {run: 'sleep 30', timeout: 0.3}\n"
        f"  post-backup-unlock: {{run: {json.dumps(PHASE_LOGGER)}, shell: true}}\n"
    )
    started = time.monotonic()
    rec = s.backup(mem_repo, job)
    assert time.monotonic() - started < 15
    assert rec.outcome == "failed" and "timed out after 0.3 s" in rec.error
    assert s.phases() == ["post-backup-unlock"]
    assert rec.phases[0]["timed_out"] is True


@pytest.mark.usefixtures("allow_alarm")  # SIGALRM, as the command line allows
def test_the_overall_timeout_interrupts_a_read_and_still_unlocks(
    s: Setup, mem_repo: Repository
) -> None:
    job = s.job("type: command\ncommand: sleep 30\ntimeout: 0.5\n" + s.hooks())
    started = time.monotonic()
    rec = s.backup(mem_repo, job)
    assert time.monotonic() - started < 15
    assert rec.outcome == "timeout" and rec.exit_code == ExitCode.SOURCE
    assert "timed out after 0.5 s" in rec.error
    assert s.phases() == BACKUP_ORDER
    assert mem_repo.list_snapshots() == []


def test_a_failing_check_skips_the_backup(s: Setup, mem_repo: Repository) -> None:
    job = s.directory(pre_backup_check='echo "replica is 900 s behind"; exit 1')
    rec = s.backup(mem_repo, job)
    assert rec.outcome == "skipped" and rec.exit_code == ExitCode.SKIPPED == 8
    assert "replica is 900 s behind" in rec.reason and rec.error == ""
    assert s.phases() == ["pre-backup-lock", "backup-cleanup", "post-backup-unlock"]
    assert mem_repo.list_snapshots() == []
    finished = next(e for e in s.events if e.event == "run.finished")
    assert finished.level == "warning" and finished.fields["outcome"] == "skipped"


def test_cleanup_failure_is_logged_not_fatal(s: Setup, mem_repo: Repository) -> None:
    rec = s.backup(mem_repo, s.directory(backup_cleanup="exit 2"))
    assert rec.outcome == "success" and rec.exit_code == 0
    assert rec.warnings == ["the backup-cleanup hook exited with status 2"]
    assert len(mem_repo.list_snapshots()) == 1


def test_unlock_failure_fails_a_saved_backup(s: Setup, mem_repo: Repository) -> None:
    rec = s.backup(mem_repo, s.directory(post_backup_unlock="exit 1"))
    assert rec.outcome == "failed" and rec.exit_code == ExitCode.SOURCE
    assert "the service may still be locked" in rec.error and rec.snapshot[:8] in rec.error
    assert len(mem_repo.list_snapshots()) == 1


class _Interrupting:
    kind = "directory"

    def content(self) -> TreeContent:
        raise KeyboardInterrupt

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        raise NotImplementedError


def test_ctrl_c_still_cleans_up_and_unlocks(s: Setup, mem_repo: Repository) -> None:
    import dataclasses

    job = dataclasses.replace(s.directory(), source=_Interrupting())
    with pytest.raises(KeyboardInterrupt):
        s.backup(mem_repo, job)
    assert s.phases() == BACKUP_ORDER
    (record_file,) = (s.state / "runs" / "src").glob("*.json")
    assert json.loads(record_file.read_text())["outcome"] == "interrupted"


def test_exit_if_in_progress(s: Setup, mem_repo: Repository) -> None:
    job = s.directory("exit_if_in_progress: true\n")
    with run_lock(s.state, "src", run_id="other-run", wait=False):
        rec = s.backup(mem_repo, job)
    assert rec.outcome == "in-progress" and rec.exit_code == ExitCode.IN_PROGRESS == 9
    assert "already in progress" in rec.error and "other-run" in rec.error
    assert not s.log.exists()  # no hook ran
    assert mem_repo.list_snapshots() == []


def test_without_exit_if_in_progress_a_second_run_waits(s: Setup, mem_repo: Repository) -> None:
    job = s.directory()
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with run_lock(s.state, "src", run_id="other-run", wait=False):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    rec = s.backup(mem_repo, job)
    t.join()
    assert rec.outcome == "success" and time.monotonic() - started >= 0.4


def test_log_events_carry_run_id_and_identifier(s: Setup, mem_repo: Repository) -> None:
    job = s.directory("identifier_command: echo instance-42\n")
    rec = s.backup(mem_repo, job)
    assert rec.identifier == "instance-42"
    after_identifier = s.events[1:]
    assert {e.event for e in after_identifier} >= {"run.started", "hook.finished", "run.finished"}
    for e in s.events:
        assert e.fields["run_id"] == rec.run_id == e.fields["backup_guid"]
        assert e.fields["source"] == "src"
    for e in after_identifier:
        assert e.fields["identifier"] == "instance-42"
    hook_events = [
        e for e in s.events if e.event == "hook.finished" and e.fields["phase"] != "identifier"
    ]
    assert [e.fields["phase"] for e in hook_events] == BACKUP_ORDER
    assert all(e.fields["exit_code"] == 0 for e in hook_events)


def test_secrets_are_masked_in_records_and_logs(s: Setup, mem_repo: Repository) -> None:
    job = s.job(
        "type: command\ncommand: echo data\nenv: {PGPASSWORD: '${PG_PW}'}\n"
        "hooks:\n  pre-backup-lock: {run: 'echo the password is $PG_PW; exit 1', shell: true}\n",
        env={"PG_PW": "hunter2-secret"},
    )
    rec = run_source_backup(
        mem_repo,
        job,
        state_dir=s.state,
        sink=s.events.append,
    )
    assert rec.outcome == "failed"
    text = json.dumps(rec.to_json()) + json.dumps([e.fields for e in s.events])
    for f in (s.state / "runs").rglob("*.json"):
        text += f.read_text()
    # The hook saw no PG_PW (it is not in its environment), and had it printed the
    # value, it would be masked: assert both ways.
    assert "hunter2-secret" not in text
    rec2 = s.backup(
        mem_repo,
        s.job(
            "type: command\ncommand: echo data\nenv: {PGPASSWORD: '${PG_PW}'}\n"
            "hooks:\n  pre-backup-lock: {run: 'echo the password is hunter2-secret; exit 1', "
            "shell: true}\n",
            env={"PG_PW": "hunter2-secret"},
        ),
    )
    out = json.dumps(rec2.to_json())
    assert "hunter2-secret" not in out and "the password is ***" in out


def test_restore_of_a_directory_source(s: Setup, mem_repo: Repository) -> None:
    job = s.directory()
    backup = s.backup(mem_repo, job)
    s.log.unlink()
    (snap,) = mem_repo.list_snapshots()
    target = s.tmp / "restored"
    rec = run_source_restore(mem_repo, job, snap, state_dir=s.state, target=str(target))
    assert rec.outcome == "success", rec.error
    assert rec.snapshot == backup.snapshot
    assert s.phases() == ["pre-restore-lock", "restore", "restore-cleanup", "post-restore-unlock"]
    assert (target / str(s.data).lstrip("/") / "a.txt").read_text() == "alpha\n"
    # A target with data in it is refused unless asked to replace; unlock still runs.
    s.log.unlink()
    again = run_source_restore(mem_repo, job, snap, state_dir=s.state, target=str(target))
    assert again.outcome == "failed" and "already holds files" in again.error
    assert s.phases() == ["pre-restore-lock", "restore-cleanup", "post-restore-unlock"]
    replaced = run_source_restore(
        mem_repo, job, snap, state_dir=s.state, target=str(target), replace=True
    )
    assert replaced.outcome == "success"
    no_target = run_source_restore(mem_repo, job, snap, state_dir=s.state)
    assert no_target.outcome == "failed" and "needs a target folder" in no_target.error


def test_restore_of_a_stream_source_with_the_restore_hook_after_it(
    s: Setup, mem_repo: Repository
) -> None:
    out = s.tmp / "restored.txt"
    job = s.job(
        "type: command\ncommand: printf 'line1\\nline2\\n'\n"
        f"restore_command: sh -c 'cat > {out}'\n"
        "hooks:\n"
        f"  restore: {{run: 'test -s {out} && echo restore >> \"$HOOK_LOG\"', shell: true}}\n"
    )
    assert s.backup(mem_repo, job).outcome == "success"
    (snap,) = mem_repo.list_snapshots()
    rec = run_source_restore(mem_repo, job, snap, state_dir=s.state)
    assert rec.outcome == "success", rec.error
    assert out.read_text() == "line1\nline2\n"
    assert s.phases() == ["restore"]  # the hook saw the restored data already in place


def test_hooks_are_told_what_is_happening(s: Setup, mem_repo: Repository) -> None:
    dump = 'env | grep ^SAFEHOLD_ | sort > "$HOOK_LOG.$SAFEHOLD_PHASE"'
    job = s.directory("identifier: svc-9\n", pre_backup_lock=dump, restore=dump)
    rec = s.backup(mem_repo, job)
    seen = dict(
        line.split("=", 1) for line in Path(f"{s.log}.pre-backup-lock").read_text().splitlines()
    )
    assert seen == {
        "SAFEHOLD_RUN_ID": rec.run_id,
        "SAFEHOLD_PLAN": "src",
        "SAFEHOLD_OPERATION": "backup",
        "SAFEHOLD_PHASE": "pre-backup-lock",
        "SAFEHOLD_SOURCE": "src",
        "SAFEHOLD_SOURCE_TYPE": "directory",
        "SAFEHOLD_IDENTIFIER": "svc-9",
        "SAFEHOLD_TARGET_DIR": str(s.data),
        "SAFEHOLD_SNAPSHOT": "",
        "SAFEHOLD_OUTCOME": "running",
    }
    (snap,) = mem_repo.list_snapshots()
    target = s.tmp / "out"
    run_source_restore(mem_repo, job, snap, state_dir=s.state, target=str(target))
    seen = dict(line.split("=", 1) for line in Path(f"{s.log}.restore").read_text().splitlines())
    assert seen["SAFEHOLD_OPERATION"] == "restore" and seen["SAFEHOLD_SNAPSHOT"] == snap.id
    assert seen["SAFEHOLD_TARGET_DIR"] == str(target) == seen["SAFEHOLD_RESTORE_TARGET"]
    assert seen["SAFEHOLD_REPLACE"] == "0"
