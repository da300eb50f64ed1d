"""Test server fixtures: azure — Azurite (the Azure Blob emulator) on a free 127.0.0.1 port.

Azurite checks Shared Key and SAS signatures even in ``--loose`` mode, so a wrong account
key and a SAS token without some permission are refused as real Azure refuses them. It
knows one account, ``devstoreaccount1``, with the published development key below.

``scripts/test-deps.sh`` installs Azurite from npm into ``CACHE/node``. The session server
keeps its blobs in memory; :func:`start_azurite` with ``location`` keeps them in a folder
instead, so that a test can stop the server and start it again with its data.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.servers import CACHE, ServerProcess, free_port, need_binary, port_open, unavailable

if TYPE_CHECKING:  # the SDK loads only when a test uses this server
    from safehold.storage.azure import AzureStorage

__all__ = ["ACCOUNT", "DEV_KEY", "Azurite", "azurite", "make_storage", "start_azurite"]

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (published in Microsoft's Azurite documentation).
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass
class Azurite:
    """A running Azurite blob service and the ways to reach it."""

    port: int
    process: ServerProcess
    location: Path | None = None  # the data folder, or None when data lives in memory

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def connection_string(self, key: str = DEV_KEY) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint={self.endpoint};"
        )

    def env(self, key: str = DEV_KEY) -> dict[str, str]:
        """Environment for the CLI: the connection string names the loopback endpoint."""
        return {
            "AZURE_STORAGE_CONNECTION_STRING": self.connection_string(key),
            "AZURE_STORAGE_ACCOUNT": "",
            "AZURE_STORAGE_KEY": "",
            "AZURE_STORAGE_SAS_TOKEN": "",
        }

    def options(self, **extra: object) -> dict[str, object]:
        """Backend options with the account key (nothing is read from the environment)."""
        return {
            "account_name": ACCOUNT,
            "account_key": DEV_KEY,
            "endpoint": self.endpoint,
            **extra,
        }

    def stop(self) -> None:
        self.process.stop()


def azurite_binary() -> str:
    need_binary("node", "nodejs (bash scripts/test-deps.sh)")
    path = CACHE / "node" / "node_modules" / ".bin" / "azurite-blob"
    if not path.exists():
        unavailable(f"Azurite is not installed at {path}: run bash scripts/test-deps.sh")
    return str(path)


def start_azurite(
    workdir: Path, *, port: int | None = None, location: Path | None = None
) -> Azurite:
    """Start Azurite on ``port`` (a free one by default), in memory unless ``location``."""
    port = port or free_port()
    argv = [
        azurite_binary(),
        "--blobHost", "127.0.0.1",
        "--blobPort", str(port),
        "--loose",
        "--disableTelemetry",  # it reports usage to Microsoft by default
        "--skipApiVersionCheck",  # the SDK may be newer than the emulator
    ]  # fmt: skip
    # --inMemoryPersistence cannot be combined with --location.
    argv += ["--location", str(location)] if location else ["--inMemoryPersistence"]
    process = ServerProcess("azurite", argv, workdir)
    process.wait_ready(lambda: port_open(port), timeout=60)
    return Azurite(port, process, location)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield server
    finally:
        server.stop()


def unique_container() -> str:
    return f"t{uuid.uuid4().hex[:20]}"


def make_storage(tmp_path: Path, request: pytest.FixtureRequest) -> AzureStorage:
    """A fresh container (removed after the test) holding an empty prefix."""
    server: Azurite = request.getfixturevalue("azurite")
    container = unique_container()
    from safehold.storage.azure import from_location

    storage = from_location(f"{container}/repo", create=True, options=server.options())
    # A separate client for the cleanup: the test closes its storage before finalizers run.
    request.addfinalizer(lambda: drop_container(server, container))
    return storage


def drop_container(server: Azurite, container: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(
        server.connection_string(), retry_total=0
    ) as service:
        try:
            service.delete_container(container)
        except ResourceNotFoundError:
            pass  # the test never created it
