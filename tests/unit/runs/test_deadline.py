"""A run's time-out without SIGALRM (safehold.runs.deadline): where the runtime allows no
alarm, or off the main thread, the run still times out, at the next read."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from safehold import runtime
from safehold.app import source_job
from safehold.config import load_config
from safehold.errors import ExitCode
from safehold.repository.repository import Repository
from safehold.runs import RunRecord, SourceJob, run_source_backup
from safehold.runtime import RuntimeSettings


@pytest.fixture
def runtime_off() -> Iterator[None]:
    before = runtime.current()
    runtime.configure(RuntimeSettings())
    try:
        yield
    finally:
        runtime.configure(before)


def _job(tmp_path: Path, source_yaml: str) -> SourceJob:
    path = tmp_path / "safehold.yaml"
    body = "".join(f"    {line}\n" for line in source_yaml.splitlines())
    path.write_text(f"sources:\n  src:\n{body}")
    return source_job(load_config(str(path)), "src")


def _timed(run: object) -> tuple[RunRecord, float]:
    started = time.monotonic()
    rec = run()  # type: ignore[operator]
    return rec, time.monotonic() - started


@pytest.mark.usefixtures("runtime_off")
def test_a_silent_read_times_out_when_it_returns(tmp_path: Path, mem_repo: Repository) -> None:
    job = _job(tmp_path, "type: command\ncommand: sleep 2\ntimeout: 0.5\n")
    rec, took = _timed(lambda: run_source_backup(mem_repo, job, state_dir=tmp_path / "s"))
    assert rec.outcome == "timeout" and rec.exit_code == ExitCode.SOURCE
    assert took >= 1.5  # no alarm cut the read short: it ended with its tool
    assert mem_repo.list_snapshots() == []  # the stream's end did not complete a snapshot


@pytest.mark.usefixtures("runtime_off")
def test_a_stream_that_keeps_writing_is_stopped_between_reads(
    tmp_path: Path, mem_repo: Repository
) -> None:
    job = _job(
        tmp_path,
        "type: command\nshell: true\ntimeout: 0.5\n"
        "command: 'while :; do echo row; sleep 0.05; done'\n",
    )
    rec, took = _timed(lambda: run_source_backup(mem_repo, job, state_dir=tmp_path / "s"))
    assert rec.outcome == "timeout" and rec.exit_code == ExitCode.SOURCE
    assert "timed out after 0.5 s" in rec.error
    assert took < 10
    assert mem_repo.list_snapshots() == []


@pytest.mark.usefixtures("allow_alarm")
def test_off_the_main_thread_no_alarm_is_armed(tmp_path: Path, mem_repo: Repository) -> None:
    job = _job(tmp_path, "type: command\ncommand: sleep 2\ntimeout: 0.5\n")
    box: list[tuple[RunRecord, float]] = []

    def run() -> None:
        box.append(_timed(lambda: run_source_backup(mem_repo, job, state_dir=tmp_path / "s")))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    ((rec, took),) = box
    assert rec.outcome == "timeout" and took >= 1.5
    assert mem_repo.list_snapshots() == []
