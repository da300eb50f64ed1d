"""Real servers for the integration tests, each started on a free 127.0.0.1 port.

Every server runs from a temporary folder owned by the test session and is stopped when
the session ends; nothing depends on servers a machine may already run. Modules here
(``s3``, ``azure``, ``gcs``, ``sftp``, ``swift``, ``postgres``, ``mysql``, ``redis``) each
define session-scoped fixtures built on :class:`ServerProcess`. They are loaded as pytest
plugins by ``tests/conftest.py``.

``scripts/test-deps.sh`` installs the Debian and npm packages these servers need.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

CACHE = Path(os.environ.get("SAFEHOLD_TEST_CACHE", Path.home() / ".cache" / "safehold-test"))


def unavailable(reason: str) -> NoReturn:
    """A server is missing: skip on a laptop, fail under CI (STYLE.md, habit 11)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so a missing server is a failure)")
    pytest.skip(reason)


# The sockets that hold the ports handed out, for as long as this process runs.
_held_ports: list[socket.socket] = []


def hold_port(port: int = 0) -> int | None:
    """Bind ``port`` on 127.0.0.1 (0: a free one) for a server about to start, and keep it
    bound until this process ends; None if something else has it.

    The socket never listens. It binds without SO_REUSEADDR, so that the port is nobody
    else's (another test process's hold included), then sets it: Linux then gives the
    port to no bind to port 0 and no outgoing connection, and refuses it to a bind without
    SO_REUSEADDR, while the server meant to have it sets SO_REUSEADDR, as servers do, and
    binds and listens on it, also when a test stops and starts it again. A port only found
    free and let go could be taken by another process before the server bound it.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _held_ports.append(s)
    return int(s.getsockname()[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, held for the caller's server (see
    :func:`hold_port`)."""
    port = hold_port()
    assert port is not None  # the kernel chose one that was free
    return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def need_binary(name: str, package: str) -> str:
    """The path of executable ``name``, or skip/fail naming the package that provides it."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/lib") / name) if p.exists()), None
    )
    if not found:
        unavailable(f"{name} not found: install {package} (bash scripts/test-deps.sh)")
    return found


class ServerProcess:
    """One server process: started with its output in a log file, stopped with SIGTERM.

    ``ready`` is polled until it returns True (or the process dies, or ``timeout`` passes);
    on failure the log's tail is part of the error, because that is where the reason is.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = list(argv)
        if user is not None:
            cmd = ["runuser", "-u", user, "--", *cmd]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # so stop() can signal the whole group
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def pause(self) -> None:
        """SIGSTOP: the server stops answering but keeps its sockets (a hung server)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)
        # The stop reaches each thread asynchronously: a thread running on another core can
        # still answer a request for a moment. Wait until every thread is stopped.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            states = []
            for stat_file in Path(f"/proc/{self.proc.pid}/task").glob("*/stat"):
                try:
                    states.append(stat_file.read_text().rsplit(")", 1)[1].split()[0])
                except (OSError, IndexError):
                    continue  # the thread exited meanwhile
            if all(state in "tT" for state in states):
                return
            time.sleep(0.001)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)
