"""Test server fixtures: swift — a single-node OpenStack Swift with TempAuth and memcached.

Debian's ``swift-{account,container,object,proxy}-server`` run from a session folder: one
device, one replica, rings built with ``swift-ring-builder``, every server on a free
127.0.0.1 port with ``workers = 0`` (one process each, so SIGSTOP of the proxy really hangs
the service). TempAuth keeps its tokens in memcached, which runs on its own port. The
device's data lives in a folder on /dev/shm when that is available (see
:func:`_memory_folder`), removed with the rest at the end of the session.

Users (TempAuth, auth URL ``/auth/v1.0``):

* ``test:tester`` / ``testing`` — account admin: may create containers and write.
* ``test:reader`` / ``reading`` — no role: may not create containers, so "no permission"
  faults are testable.

Logging: without ``/dev/log`` Swift falls back to syslog over UDP to port 514. Each
server is pointed at ``log_udp_host = 127.0.0.1`` on a port nobody reads instead (UDP
datagrams to a closed loopback port are simply dropped) and runs with ``-v``, which adds a
console handler, so the lines land in the ``ServerProcess`` log files. They log at WARNING:
per-request log lines made each request about a third slower on a 2-core machine.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from safehold.storage.base import Storage
from tests.servers import ServerProcess, free_port, need_binary, port_open, unavailable

__all__ = ["SwiftServer", "make_storage", "start_swift", "swift_server"]

USER, KEY = "test:tester", "testing"
READER, READER_KEY = "test:reader", "reading"
HASH_PREFIX, HASH_SUFFIX = "safehold-test-prefix", "safehold-test-suffix"
SERVERS = ("account", "container", "object")
PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl slo "
    "dlo tempauth copy proxy-logging proxy-server"
)


@dataclass
class SwiftServer:
    """A running Swift cluster of one node; ``proxy`` is the process clients talk to."""

    workdir: Path
    proxy_port: int
    proxy: ServerProcess
    backends: dict[str, ServerProcess] = field(default_factory=dict)
    memcached: ServerProcess | None = None

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        """The account URL TempAuth hands out for ``test:tester``."""
        return f"http://127.0.0.1:{self.proxy_port}/v1/AUTH_test"

    def options(self, **extra: object) -> dict[str, object]:
        """Backend options for the admin user (TempAuth, auth version 1)."""
        return {"auth_url": self.auth_url, "user": USER, "key": KEY, **extra}

    def env(self, *, user: str = USER, key: str = KEY) -> dict[str, str]:
        """``ST_*`` variables for one user; the ``OS_*`` ones that would win are blanked."""
        blank = dict.fromkeys(("OS_STORAGE_URL", "OS_AUTH_TOKEN"), "")
        return {**blank, "ST_AUTH": self.auth_url, "ST_USER": user, "ST_KEY": key}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.proxy_port}/healthcheck", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop_proxy(self) -> None:
        """The proxy goes away (connections are refused); the rest of the cluster stays."""
        self.proxy.resume()
        self.proxy.stop()

    def start_proxy(self, timeout: float = 60.0) -> None:
        """Start the proxy again on the same port with the same configuration (or let a
        paused one go on)."""
        if self.proxy.alive():
            self.proxy.resume()
            return
        argv = [str(arg) for arg in self.proxy.proc.args]  # type: ignore[union-attr]
        self.proxy = ServerProcess("swift-proxy", argv, self.workdir)
        self.proxy.wait_ready(self.healthy, timeout)

    def all_processes(self) -> list[ServerProcess]:
        found = [self.proxy, *self.backends.values()]
        return found + ([self.memcached] if self.memcached else [])

    def stop(self) -> None:
        for process in self.all_processes():
            try:
                process.resume()  # a paused server cannot act on SIGTERM
            except ProcessLookupError:
                pass
            process.stop()


def _conf(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


# The same steps as ``swift-ring-builder X.builder create 6 1 1; add r1z1-127.0.0.1:PORT/d1
# 100; rebalance`` for the three rings, through Swift's own RingBuilder in one interpreter:
# nine swift-ring-builder runs cost about 8 s of interpreter start-up, this costs 0.5 s.
_RING_SCRIPT = """
import sys
from swift.common.ring import RingBuilder
swift_dir = sys.argv[1]
for arg in sys.argv[2:]:
    kind, port = arg.split(":")
    builder = RingBuilder(6, 1, 1)
    builder.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port),
                     "device": "d1", "weight": 100})
    builder.rebalance()
    builder.save(f"{swift_dir}/{kind}.builder")
    builder.get_ring().save(f"{swift_dir}/{kind}.ring.gz")
"""


def _build_rings(swift_python: str, swift_dir: Path, ports: dict[str, int]) -> None:
    done = subprocess.run(
        [swift_python, "-c", _RING_SCRIPT, str(swift_dir), *(f"{k}:{ports[k]}" for k in SERVERS)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not (swift_dir / "object.ring.gz").exists():
        raise RuntimeError(f"building the rings failed:\n{done.stdout}{done.stderr}")


def _interpreter(script: str) -> str:
    """The Python that runs Swift's scripts (Debian's /usr/bin/python3), from their #! line."""
    with open(script, "rb") as f:
        first = f.readline().decode(errors="replace")
    return first[2:].strip().split()[0] if first.startswith("#!") else "python3"


def start_swift(
    workdir: Path, *, devices: Path | None = None, timeout: float = 60.0
) -> SwiftServer:
    """Build a one-node cluster in ``workdir``, start its five processes, wait for health.

    ``devices`` (default ``workdir/srv``) holds the object, container and account data.
    """
    binaries = {
        name: need_binary(f"swift-{name}-server", f"swift-{name}") for name in (*SERVERS, "proxy")
    }
    memcached_bin = need_binary("memcached", "memcached")
    swift_dir = workdir / "etc"
    devices = devices or workdir / "srv"
    (devices / "d1").mkdir(parents=True)
    swift_dir.mkdir()
    _conf(
        swift_dir / "swift.conf",
        f"""
[swift-hash]
swift_hash_path_prefix = {HASH_PREFIX}
swift_hash_path_suffix = {HASH_SUFFIX}
[storage-policy:0]
name = Policy-0
default = yes
""",
    )
    ports = {name: free_port() for name in (*SERVERS, "proxy", "memcached", "syslog")}
    common = f"""
bind_ip = 127.0.0.1
workers = 0
user = {pwd.getpwuid(os.getuid()).pw_name}
swift_dir = {swift_dir}
log_udp_host = 127.0.0.1
log_udp_port = {ports["syslog"]}
log_level = WARNING
"""
    _build_rings(_interpreter(binaries["proxy"]), swift_dir, ports)
    for kind in SERVERS:
        _conf(
            swift_dir / f"{kind}-server.conf",
            f"""
[DEFAULT]
{common}
bind_port = {ports[kind]}
devices = {devices}
mount_check = false
log_name = {kind}-server
[pipeline:main]
pipeline = {kind}-server
[app:{kind}-server]
use = egg:swift#{kind}
""",
        )
    _conf(
        swift_dir / "proxy-server.conf",
        f"""
[DEFAULT]
{common}
bind_port = {ports["proxy"]}
log_name = proxy-server
[pipeline:main]
pipeline = {PIPELINE}
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {KEY} .admin
user_test_reader = {READER_KEY}
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{ports["memcached"]}
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:copy]
use = egg:swift#copy
""",
    )
    started: list[ServerProcess] = []
    try:
        memcached = ServerProcess(
            "memcached",
            [memcached_bin, "-l", "127.0.0.1", "-p", str(ports["memcached"]), "-U", "0",
             "-u", "root", "-m", "64"],
            workdir,
        )  # fmt: skip
        started.append(memcached)
        backends: dict[str, ServerProcess] = {}
        for kind in SERVERS:
            conf = swift_dir / f"{kind}-server.conf"
            backends[kind] = ServerProcess(
                f"swift-{kind}", [binaries[kind], str(conf), "-v"], workdir
            )
            started.append(backends[kind])
        conf = swift_dir / "proxy-server.conf"
        proxy = ServerProcess("swift-proxy", [binaries["proxy"], str(conf), "-v"], workdir)
        started.append(proxy)
        server = SwiftServer(workdir, ports["proxy"], proxy, backends, memcached)
        memcached.wait_ready(functools.partial(port_open, ports["memcached"]), timeout)
        for kind in SERVERS:
            backends[kind].wait_ready(functools.partial(port_open, ports[kind]), timeout)
        proxy.wait_ready(server.healthy, timeout)
    except BaseException:
        for process in started:
            process.stop()
        raise
    return server


def _memory_folder() -> Path | None:
    """A fresh folder on /dev/shm (tmpfs, with the user xattrs Swift needs), if there is one.

    Swift fsyncs every object, container and account write; on tmpfs an fsync is free,
    which made each PUT 30-50 % faster here (and the conformance suite does thousands).
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return None
    folder = Path(tempfile.mkdtemp(prefix="safehold-swift-", dir=shm))
    probe = folder / "probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.swift.probe", b"1")
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    probe.unlink()
    return folder


@pytest.fixture(scope="session")
def swift_server() -> Iterator[SwiftServer]:
    workdir = Path(tempfile.mkdtemp(prefix="safehold-swift-"))
    memory = _memory_folder()
    try:
        try:
            server = start_swift(workdir, devices=memory / "srv" if memory else None)
        except RuntimeError as exc:
            unavailable(f"Swift did not start: {exc}")
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if memory is not None:
            shutil.rmtree(memory, ignore_errors=True)


def make_storage(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    """A fresh, empty store: a new container (created on open) with a prefix inside it."""
    from safehold.storage.swift import from_location

    server: SwiftServer = request.getfixturevalue("swift_server")
    container = f"conf-{uuid.uuid4().hex[:12]}"
    return from_location(f"{container}/repo", create=True, options=server.options())
