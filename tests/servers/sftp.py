"""OpenSSH ``sshd`` on a free 127.0.0.1 port, for the SFTP backend.

The server runs from a temporary folder with its own configuration, a fresh ed25519 host
key and an ``authorized_keys`` file holding a fresh client key. The login is ``root`` (the
test machine runs as root; a non-root user would need ``useradd``) with that key only. The
SFTP subsystem starts in ``<workdir>/home`` (``internal-sftp -d``), so locations relative to
the login folder land inside the temporary folder too, never in root's real home.

``sshd`` forks one process per connection and each of those calls ``setsid()``, so stopping
the listener's process group does not reach them: :meth:`SftpServer.kill_sessions` walks the
process tree instead. The fault tests use :func:`sftp_server_factory` for a private server
they may stop, pause and restart without disturbing the shared ``sftp_server``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from safehold.storage.base import Storage
from tests.servers import ServerProcess, free_port, need_binary, port_open, unavailable

__all__ = ["SftpServer", "make_storage", "sftp_server", "sftp_server_factory"]


def _keygen(path: Path, comment: str) -> None:
    keygen = need_binary("ssh-keygen", "openssh-client")
    argv = [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    subprocess.run(argv, check=True, capture_output=True)


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # The command name (2nd field) may contain spaces; the ppid follows ")".
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class SftpServer:
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: ServerProcess | None = None
    scratch: Path | None = None  # see fast_folder()

    def __post_init__(self) -> None:
        self.sshd = need_binary("sshd", "openssh-server")
        self.home = self.workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.host_key = self.workdir / "hostkey_ed25519"
        self.client_key = self.workdir / "clientkey"
        self.other_key = self.workdir / "otherkey"  # a valid key the server does not accept
        _keygen(self.host_key, "safehold-test-host")
        _keygen(self.client_key, "safehold-test-client")
        _keygen(self.other_key, "safehold-test-stranger")
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        self.config = self.workdir / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "AllowUsers root",
                    "MaxStartups 100",
                    "MaxSessions 50",
                    f"Subsystem sftp internal-sftp -d {self.home}",
                    "",
                ]
            )
        )
        # sshd's privilege-separation folder; a fresh container has no /run/sshd.
        try:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        except OSError as exc:
            unavailable(f"sshd needs the folder /run/sshd and it cannot be made: {exc}")

    # --- facts tests need --------------------------------------------------------------------

    def host_key_line(self) -> str:
        """The host key as ``ssh-keyscan -p PORT 127.0.0.1`` prints it."""
        keytype, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {keytype} {b64}"

    def location(self, path: str) -> str:
        """``sftp:root@127.0.0.1:PORT/ABS`` for an absolute ``path``, else ``.../~/REL``."""
        return f"sftp:root@127.0.0.1:{self.port}{path if path.startswith('/') else '/~/' + path}"

    def env(self, **extra: str) -> dict[str, str]:
        """The SAFEHOLD_SFTP_* variables that reach this server with the right key and pin."""
        env = {
            "SAFEHOLD_SFTP_KEY_FILE": str(self.client_key),
            "SAFEHOLD_SFTP_HOST_KEY": self.host_key_line(),
        }
        env.update(extra)
        return env

    def options(self, **extra: object) -> dict[str, object]:
        opts: dict[str, object] = {
            "key_file": str(self.client_key),
            "host_key": self.host_key_line(),
        }
        opts.update(extra)
        return opts

    def fast_folder(self) -> Path:
        """A fresh folder for a store, on tmpfs where there is one: the conformance suite
        makes thousands of objects and each put fsyncs; on a shared disk that alone takes
        most of its time. Removed with the session's server."""
        if self.scratch is None:
            shm = Path("/dev/shm")
            base = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir
            self.scratch = Path(tempfile.mkdtemp(prefix="safehold-sftp-", dir=base))
        return self.scratch / uuid.uuid4().hex

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        assert self.proc is None or not self.proc.alive()
        self.proc = ServerProcess(
            "sshd", [self.sshd, "-D", "-e", "-f", str(self.config)], self.workdir
        )
        self.proc.wait_ready(lambda: port_open(self.port), timeout=20)

    def kill_sessions(self) -> None:
        """SIGKILL every per-connection sshd process: clients see their connections drop."""
        if self.proc is not None:
            _signal_all(_children(self.proc.proc.pid), signal.SIGKILL)

    def stop(self) -> None:
        """The listener and every session go away; nothing listens on the port after this."""
        if self.proc is None:
            return
        children = _children(self.proc.proc.pid)
        self.proc.stop()
        _signal_all(children, signal.SIGKILL)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP the listener and its sessions: connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.pause()
        _signal_all(_children(self.proc.proc.pid), signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        _signal_all(_children(self.proc.proc.pid), signal.SIGCONT)
        self.proc.resume()


def _start(workdir: Path) -> SftpServer:
    server = SftpServer(workdir)
    server.start()
    return server


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SftpServer]:
    server = _start(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
        if server.scratch is not None:
            shutil.rmtree(server.scratch, ignore_errors=True)


@pytest.fixture
def sftp_server_factory(tmp_path: Path) -> Iterator[Callable[[], SftpServer]]:
    """``sftp_server_factory()`` starts a private server this test may stop and pause."""
    started: list[SftpServer] = []

    def start() -> SftpServer:
        server = _start(tmp_path / f"sshd-{len(started)}")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            if server.proc is not None and server.proc.alive():
                server.resume()  # a stopped process ignores SIGTERM until continued
            server.stop()


def make_storage(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    """A fresh, empty folder on the shared server (conformance suite)."""
    from safehold.storage.sftp import from_location

    server: SftpServer = request.getfixturevalue("sftp_server")
    folder = server.fast_folder()
    return from_location(
        f"root@127.0.0.1:{server.port}{folder}",
        create=True,
        options=server.options(timeout=30, max_connections=4),
    )


def wait_closed(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.05)
