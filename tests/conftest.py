"""Fixtures shared by every test: fast keys, repositories, and a way to run the CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from safehold import runtime
from safehold.crypto.keys import KdfParams
from safehold.repository.repository import Repository
from safehold.runtime import RuntimeSettings
from safehold.storage.local import LocalStorage
from safehold.storage.memory import MemoryStorage

# Key derivation at full cost takes 0.2 s per open; tests use a cheap one.
FAST_KDF = KdfParams(n=1 << 10)
PASSWORD = b"correct horse battery staple"
ROOT = Path(__file__).resolve().parent.parent


# Real servers (started only when a test asks for one): see tests/servers/__init__.py.
pytest_plugins = [
    "tests.servers.s3",
    "tests.servers.azure",
    "tests.servers.gcs",
    "tests.servers.sftp",
    "tests.servers.swift",
    "tests.servers.postgres",
    "tests.servers.mysql",
    "tests.servers.redis",
]


@pytest.fixture(autouse=True, scope="session")
def _index_caches_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Repositories opened by the tests keep their index caches in a temporary folder, not
    the user's ~/.cache. XDG_CACHE_HOME, not SAFEHOLD_CACHE_DIR: tests that look at the
    SAFEHOLD_* variables a hook sees expect only safehold's own."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("caches"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run long campaigns (crash points, soaks)")


@pytest.fixture
def long_mode(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--long"))


def _runtime_allowing(settings: RuntimeSettings) -> Iterator[None]:
    before = runtime.current()
    runtime.configure(settings)
    try:
        yield
    finally:
        runtime.configure(before)


@pytest.fixture
def allow_fork() -> Iterator[None]:
    """Restores may fork workers, as the command line allows (safehold.runtime); a test
    process configures no runtime, so without this they restore in threads."""
    yield from _runtime_allowing(dataclasses.replace(runtime.current(), fork=True))


@pytest.fixture
def allow_alarm() -> Iterator[None]:
    """A run's time-out may arm SIGALRM in the main thread, as the command line allows."""
    yield from _runtime_allowing(dataclasses.replace(runtime.current(), alarm=True))


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """Ctrl-C handled as Python does by default, here and in the programs this test starts.
    A test run started in the background by a shell without job control (``cmd &`` in a
    script) inherits SIGINT ignored, and so does every program it starts: a test that
    sends SIGINT would wait for nothing. A handled signal is reset to its default when a
    child program starts, an ignored one is not."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture
def mem_repo() -> Repository:
    return Repository.init(MemoryStorage(), PASSWORD, kdf=FAST_KDF)


@pytest.fixture
def local_repo(tmp_path: Path) -> Repository:
    return Repository.init(LocalStorage(tmp_path / "repo", create=True), PASSWORD, kdf=FAST_KDF)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    env["SAFEHOLD_PASSWORD"] = PASSWORD.decode()
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["HOME"] = str(tmp_path / "home")
    return env


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Iterator[CliRunner]:
    """Runs ``python -m safehold ARGS`` as a real process."""

    def run(
        *args: str,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> CliResult:
        full_env = dict(cli_env)
        if env:
            full_env.update(env)
        proc = subprocess.run(
            [sys.executable, "-m", "safehold", *args],
            input=input,
            capture_output=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )
        return CliResult(
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    yield run


@pytest.fixture
def cli_repo(cli: CliRunner, tmp_path: Path) -> str:
    """A fresh repository (cheap key) made with ``safehold init``; returns its path."""
    path = str(tmp_path / "repo")
    res = cli("-r", path, "init", "--kdf-log2n", "10")
    assert res.code == 0, res.output
    return path


def make_sample_tree(root: Path) -> Path:
    """A small tree with the kinds of things backups must keep."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "hello.txt").write_text("hello world\n")
    (root / "sub" / "data.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "sub" / "deeper" / "notes.md").write_text("# notes\n" * 1000)
    (root / "empty.txt").write_bytes(b"")
    os.symlink("hello.txt", root / "link")
    os.link(root / "hello.txt", root / "hardlink.txt")
    os.chmod(root / "sub" / "deeper" / "notes.md", 0o640)
    return root


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    return make_sample_tree(tmp_path / "src")


@pytest.fixture
def kdf_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Records the password of every scrypt actually computed (crypto/kdf.py), in a thread
    ahead of time or not; no derivation started ahead outlives the test."""
    from safehold.crypto import kdf

    calls: list[bytes] = []
    real = kdf._compute

    def counting(password: bytes, *args: int | bytes | str) -> bytes:
        calls.append(password)
        return real(password, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(kdf, "_compute", counting)
    yield calls
    kdf._ahead.clear()
