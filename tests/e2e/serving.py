"""One ``safehold serve`` process as the end-to-end tests drive it, and its catalog read
straight from its private cluster (cheaper than a command for :func:`wait_for`'s polling).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import PASSWORD


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a service and its commands: none of the caller's SAFEHOLD_
    settings, the repository's password in REPO_PW, a home and cache of the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env.update(
        REPO_PW=PASSWORD.decode(),
        HOME=str(tmp_path / "home"),
        SAFEHOLD_CACHE_DIR=str(tmp_path / "cache"),
        **extra,
    )
    return env


class Child:
    """A long-running safehold process a test starts (``serve``, ``agent``): how it is
    stopped, and killed if a test left it running."""

    proc: subprocess.Popen[bytes] | None = None

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as an operator stops it; its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """End the process if a test left it running (a fixture's last word)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Service(Child):
    """One ``safehold serve`` process and the commands that talk to its catalog."""

    def __init__(self, config: Path, state_dir: Path, env: dict[str, str], log: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        self.env = env
        self.log = log
        self.proc = None

    def base(self) -> list[str]:
        return ["--config", str(self.config), "--state-dir", str(self.state_dir)]

    def start(self, *extra: str, workers: int = 3) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "safehold", "--log-format", "json", "serve",
                 *self.base(), "--tick", "0.5", "--workers", str(workers),
                 "--listen", "127.0.0.1:0", *extra],
                env=self.env, stdout=out, stderr=out,
            )  # fmt: skip

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "safehold", *args, *self.base()],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def runs(self, *args: str) -> list[dict[str, Any]]:
        return json.loads(self.run("--json", "runs", "--limit", "1000", *args).stdout)  # type: ignore[no-any-return]

    def plans(self) -> dict[str, dict[str, Any]]:
        return {p["plan"]: p for p in json.loads(self.run("--json", "plans").stdout)}

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` in the service's catalog; none while its cluster is starting or
        being migrated."""
        conninfo = f"host='{self.state_dir}/postgresql/run' port=5432 user=safehold dbname=safehold"
        try:
            with psycopg.connect(conninfo) as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error:
            return []

    def ledger(self, plan: str) -> list[tuple[str, str | None]]:
        """The states and reasons of ``plan``'s slots, oldest first."""
        rows = self.query(
            "SELECT s.state, s.reason FROM slots s JOIN plans p ON p.id = s.plan_id "
            "WHERE p.name = %s ORDER BY s.slot_at",
            plan,
        )
        return [(state, reason) for state, reason in rows]

    def starts(self, plan: str) -> list[float]:
        """Start times (Unix seconds) of ``plan``'s succeeded backups, oldest first."""
        rows = self.query(
            "SELECT extract(epoch FROM r.started_at) FROM runs r "
            "JOIN plans p ON p.id = r.plan_id WHERE p.name = %s AND r.kind = 'backup' "
            "AND r.state = 'succeeded' ORDER BY r.started_at",
            plan,
        )
        return [float(row[0]) for row in rows]

    def count(self, plan: str, state: str | None = None, kind: str = "backup") -> int:
        """Runs of ``plan`` (``project/name``), in ``state`` if given; 0 while the
        service's cluster is starting."""
        project, name = plan.split("/")
        rows = self.query(
            "SELECT count(*) FROM runs r JOIN plans p ON p.id = r.plan_id "
            "WHERE p.project = %s AND p.name = %s AND r.kind = %s "
            "AND (%s::text IS NULL OR r.state = %s)",
            project, name, kind, state, state,
        )  # fmt: skip
        return int(rows[0][0]) if rows else 0


@contextmanager
def service_in(tmp_path: Path, state_dir: Path, **env: str) -> Iterator[Service]:
    """A :class:`Service` with its files in ``tmp_path``, killed afterwards if a test left
    it running."""
    svc = Service(
        tmp_path / "safehold.yaml", state_dir, serve_env(tmp_path, **env), tmp_path / "serve.log"
    )
    try:
        yield svc
    finally:
        svc.kill()
