"""A configured run against what its hooks and dump commands leave running, and what it
records of a failed command (issue 15): time-outs hold, nothing survives, tails are kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from safehold.app import source_job
from safehold.config import load_config
from safehold.errors import ExitCode
from safehold.repository.repository import Repository
from safehold.runs.events import LogEvent
from safehold.runs.job import SourceJob
from safehold.runs.source_run import run_source_backup
from tests.process_groups import gone, read_pid


def _job(tmp_path: Path, source_yaml: str) -> SourceJob:
    path = tmp_path / "safehold.yaml"
    body = "".join(f"    {line}\n" for line in source_yaml.splitlines())
    path.write_text(f"sources:\n  src:\n{body}")
    return source_job(load_config(str(path)), "src")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ended(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_a_check_hook_leaving_a_child_lets_the_run_go_on_and_says_why(
    tmp_path: Path, mem_repo: Repository
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    child = tmp_path / "child.pid"
    job = _job(
        tmp_path,
        f"type: directory\npaths: [{data}]\ntimeout: 8s\nhooks:\n"
        f"  pre-backup-check: {{run: 'sleep 30 & echo $! > {child}; echo lag ok', "
        "shell: true, timeout: 4s}\n",
    )
    events: list[LogEvent] = []
    started = time.monotonic()
    rec = run_source_backup(mem_repo, job, state_dir=tmp_path / "state", sink=events.append)
    assert time.monotonic() - started < 15  # it took the child's 30 s
    assert rec.outcome == "success" and rec.exit_code == 0, rec.error
    (warning,) = rec.warnings
    assert warning.startswith("the pre-backup-check hook exited with status 0, but processes")
    assert "still held its output" in warning
    assert rec.phases[0]["lingering"] is True and rec.phases[0]["stdout"] == "lag ok\n"
    assert any(e.event == "hook.lingering" and e.level == "warning" for e in events)
    assert _ended(read_pid(child)), "the hook's background child survived"


@pytest.mark.usefixtures("allow_alarm")  # SIGALRM, as the command line allows
def test_the_sources_timeout_holds_against_a_dump_left_in_the_background(
    tmp_path: Path, mem_repo: Repository
) -> None:
    # The command exits at once; its background child holds the output for 30 s.
    child = tmp_path / "child.pid"
    job = _job(
        tmp_path,
        f"type: command\nshell: true\ntimeout: 3s\n"
        f"command: 'echo rows; sleep 30 & echo $! > {child}'\n",
    )
    started = time.monotonic()
    rec = run_source_backup(mem_repo, job, state_dir=tmp_path / "state")
    assert time.monotonic() - started < 15
    assert rec.outcome == "timeout" and rec.exit_code == ExitCode.SOURCE
    assert "timed out after 3 s" in rec.error
    assert mem_repo.list_snapshots() == []
    assert _ended(read_pid(child)), "the dump's background child survived"


def test_every_hook_is_bounded_so_the_run_is_too(tmp_path: Path, mem_repo: Repository) -> None:
    # The check before the read, cleanup and unlock after (they run outside the source's
    # timeout): each leaves a child holding its output. That run took 90 s.
    data = tmp_path / "data"
    data.mkdir()
    phases = ["pre-backup-check", "backup-cleanup", "post-backup-unlock"]
    pgids = [tmp_path / f"{phase}.pgid" for phase in phases]
    hooks = "".join(
        f"  {phase}: {{run: 'echo $$ > {pgid}; sleep 30 & echo {phase}', shell: true}}\n"
        for phase, pgid in zip(phases, pgids, strict=True)
    )
    job = _job(tmp_path, f"type: directory\npaths: [{data}]\ntimeout: 8s\nhooks:\n{hooks}")
    started = time.monotonic()
    rec = run_source_backup(mem_repo, job, state_dir=tmp_path / "state")
    assert time.monotonic() - started < 20
    assert rec.outcome == "success", rec.error
    assert [p["phase"] for p in rec.phases] == phases
    assert all(p["lingering"] and p["exit_code"] == 0 for p in rec.phases)
    assert len(rec.warnings) == 3
    assert all(gone(read_pid(p)) for p in pgids)


def test_a_failed_dump_keeps_its_stderr_tail_in_the_record_and_log(
    tmp_path: Path, mem_repo: Repository
) -> None:
    job = _job(
        tmp_path,
        "type: command\nshell: true\n"
        "command: 'for i in $(seq 1 500); do "
        'echo "pg_dump: dumping contents of table public.t$i" >&2; done; '
        'echo "server closed the connection unexpectedly" >&2; '
        'echo "Command was: COPY public.orders TO stdout;" >&2; exit 1\'\n',
    )
    events: list[LogEvent] = []
    rec = run_source_backup(mem_repo, job, state_dir=tmp_path / "state", sink=events.append)
    assert rec.outcome == "failed" and rec.exit_code == ExitCode.SOURCE
    first, intro, *rest = rec.error.splitlines()
    assert first == "command source 'stdout': sh exited with status 1; no snapshot was saved"
    assert intro == "  its standard error ended with:"
    assert "    server closed the connection unexpectedly" in rest
    assert "    Command was: COPY public.orders TO stdout;" in rest
    assert 8000 < len(rec.error_output) <= 8192
    assert rec.error_output.endswith("Command was: COPY public.orders TO stdout;")
    assert rec.to_json()["error_output"] == rec.error_output
    finished = next(e for e in events if e.event == "run.finished")
    assert finished.fields["error_output"] == rec.error_output
    assert os.path.exists(tmp_path / "state" / "runs" / "src" / f"{rec.run_id}.json")
