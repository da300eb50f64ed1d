"""Redis 7 servers on free 127.0.0.1 ports, for the redis source.

Each server keeps its data folder in a temporary folder, never saves on its own
(``--save ''``) and has no AOF. ``repl-diskless-sync-delay`` is 0 so an RDB transfer starts
at once (the default, 5 s, waits for more replicas to join).

* ``redis_server`` — one per session (per xdist worker); tests use their own key prefixes.
* ``redis_server_factory`` — ``make(password=None)`` returns a private extra server (to
  restore into, to stop and start again, or with ``requirepass``); all are stopped when the
  test ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from safehold.sources.redis_util import RedisConnection
from tests.servers import ServerProcess, free_port, need_binary, port_open

__all__ = ["RedisServer", "redis_server", "redis_server_factory"]


@dataclass
class RedisServer:
    root: Path
    password: str | None = None
    port: int = field(default_factory=free_port)
    proc: ServerProcess | None = None

    def start(self) -> None:
        argv = [need_binary("redis-server", "redis-server"), "--bind", "127.0.0.1"]
        argv += ["--port", str(self.port), "--dir", str(self.root), "--save", "", "--daemonize"]
        argv += ["no", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        argv += ["--enable-debug-command", "local"]  # DEBUG POPULATE fills it quickly
        if self.password is not None:
            argv += ["--requirepass", self.password]
        self.proc = ServerProcess("redis", argv, self.root)
        self.proc.wait_ready(lambda: port_open(self.port), timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def kill(self) -> int:
        """SIGKILL the server (a crash, mid-transfer); returns 1 for killing_after()."""
        assert self.proc is not None
        os.killpg(self.proc.proc.pid, signal.SIGKILL)
        self.proc.stop()
        self.proc = None
        return 1

    def client(self) -> RedisConnection:
        return RedisConnection("127.0.0.1", self.port, password=self.password)

    @property
    def rdb_path(self) -> Path:
        return self.root / "dump.rdb"


def _new_server(password: str | None = None) -> RedisServer:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="safehold-test-redis-")), password)
    try:
        server.start()
    except BaseException:
        shutil.rmtree(server.root, ignore_errors=True)
        raise
    return server


def _discard(server: RedisServer) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _new_server()
    try:
        yield server
    finally:
        _discard(server)


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    made: list[RedisServer] = []

    def make(password: str | None = None) -> RedisServer:
        server = _new_server(password)
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            _discard(server)
