"""The runtime (safehold.runtime): nothing process-wide changes unless an entry point
configures it, and the engine is correct without it."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from safehold import runtime
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.repository.repository import Repository
from safehold.runtime import RuntimeSettings
from safehold.storage.local import LocalStorage
from tests.conftest import FAST_KDF, PASSWORD


@pytest.fixture
def runtime_off() -> Iterator[None]:
    before = runtime.current()
    runtime.configure(RuntimeSettings())
    try:
        yield
    finally:
        runtime.configure(before)


@pytest.fixture
def untouchable(monkeypatch: pytest.MonkeyPatch, runtime_off: None) -> None:
    """What only the runtime may change, made to fail the test if anything changes it."""

    def refuse(name: str) -> object:
        def call(*args: object, **kw: object) -> None:
            raise AssertionError(f"{name} called while no runtime is configured")

        return call

    monkeypatch.setattr(sys, "setswitchinterval", refuse("sys.setswitchinterval"))
    monkeypatch.setattr(gc, "set_threshold", refuse("gc.set_threshold"))
    monkeypatch.setattr(gc, "disable", refuse("gc.disable"))
    monkeypatch.setattr(gc, "freeze", refuse("gc.freeze"))
    monkeypatch.setattr(os, "fork", refuse("os.fork"))


@pytest.mark.usefixtures("untouchable")
def test_a_backup_and_restore_round_trip_with_the_runtime_off(tmp_path: Path) -> None:
    # A fork-safe storage and packs enough for worker processes: only the runtime's
    # answer keeps the restore in threads.
    storage = LocalStorage(tmp_path / "repo", create=True)
    repo = Repository.init(storage, PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {f"sub/f{i}": os.urandom(200_000 + i) for i in range(12)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    snap = run_backup(repo, BackupOptions(paths=[str(src)], threads=2)).snapshot
    assert len(repo.list_packs()) >= 8
    target = tmp_path / "out"
    result = run_restore(repo, snap, RestoreOptions(target=str(target), processes=2))
    assert result.errors == [] and result.damaged == []
    out = target / str(src).lstrip("/")
    assert {name: (out / name).read_bytes() for name in files} == files


def _in_a_fresh_interpreter(code: str) -> Any:
    """What ``code``, run by a new interpreter with this one's path, prints as JSON."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, env=env, timeout=60
    ).stdout
    return json.loads(out)


_PROBE = """
import gc, json, sys, threading
import safehold.cli.main, safehold.engine.backup, safehold.engine.restore, safehold.runs
from safehold import runtime

def state():
    box = []
    t = threading.Thread(target=lambda: box.append(runtime.may_use_alarm()))
    t.start(); t.join()
    return {"interval": sys.getswitchinterval(), "thresholds": list(gc.get_threshold()),
            "fork": runtime.may_fork(), "alarm": runtime.may_use_alarm(),
            "alarm_in_a_thread": box[0]}

before = state()
runtime.configure(safehold.cli.main.RUNTIME)
print(json.dumps([before, state()]))
"""


def test_the_settings_are_applied_only_by_configure() -> None:
    # A fresh interpreter: importing every layer changes nothing; configure does.
    before, after = _in_a_fresh_interpreter(_PROBE)
    assert before == {
        "interval": 0.005,
        "thresholds": [700, 10, 10],
        "fork": False,
        "alarm": False,
        "alarm_in_a_thread": False,
    }
    assert after == {
        "interval": 0.001,
        "thresholds": [100_000, 20, 20],
        "fork": True,
        "alarm": True,
        "alarm_in_a_thread": False,  # signals reach the main thread only
    }


def test_the_walk_changes_the_switch_interval_only_where_allowed(runtime_off: None) -> None:
    interval = sys.getswitchinterval()
    with runtime.walk_switching():
        assert sys.getswitchinterval() == interval
    runtime.configure(RuntimeSettings(walk_switch_interval=interval / 4))
    with runtime.walk_switching():
        assert sys.getswitchinterval() == pytest.approx(interval / 4)
    assert sys.getswitchinterval() == interval


_SETTLED = """
import gc, json
from safehold import runtime

class Held:  # an object start-up made, alive for the process's life
    pass

made = [Held() for _ in range(1000)]
runtime.settled()  # not allowed: nothing frozen
counts = [gc.get_freeze_count()]
runtime.configure(runtime.SERVICE)
runtime.settled()
counts.append(gc.get_freeze_count())
print(json.dumps(counts))
"""


def test_the_service_freezes_what_start_up_made_once_settled() -> None:
    # A fresh interpreter: a freeze is for the process's life.
    before, after = _in_a_fresh_interpreter(_SETTLED)
    assert before == 0
    assert after >= 1000  # start-up's objects are out of the collector's passes
