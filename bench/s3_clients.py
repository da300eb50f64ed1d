"""Which S3 client library moves packs with less CPU: boto3 or obstore?

Starts its own SeaweedFS (tests/servers/s3.py), then puts and gets ``--total`` MiB in
``--object`` MiB objects with each client, sequentially and with 8 threads (safehold's
storage concurrency), and prints wall time, client CPU (getrusage, all threads) and server
CPU (/proc). Run from the project root::

    uv run python -m bench.s3_clients --total 512 --object 16
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.servers.s3 import SeaweedS3, start_seaweedfs

MiB = 1 << 20


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _boto3(
    server: SeaweedS3, bucket: str
) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.admin_key,
        aws_secret_access_key=server.admin_secret,
        region_name=server.region,
        config=Config(
            s3={"addressing_style": "path"},
            max_pool_connections=16,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    client.create_bucket(Bucket=bucket)

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)

    def get(key: str) -> bytes:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    return put, get


def _obstore(
    server: SeaweedS3, bucket: str
) -> tuple[Callable[[str, bytes], None], Callable[[str], bytes]]:
    import obstore
    from obstore.store import S3Store

    store = S3Store(
        bucket,
        endpoint=server.endpoint,
        access_key_id=server.admin_key,
        secret_access_key=server.admin_secret,
        region=server.region,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True},
    )

    def put(key: str, data: bytes) -> None:
        obstore.put(store, key, data)

    def get(key: str) -> bytes:
        return bytes(obstore.get(store, key).bytes())

    return put, get


def run(server: SeaweedS3, name: str, threads: int, total: int, size: int) -> None:
    bucket = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    if name == "obstore":  # obstore has no bucket administration: make it with boto3
        _boto3(server, bucket)
        put, get = _obstore(server, bucket)
    else:
        put, get = _boto3(server, bucket)
    payloads = [os.urandom(size) for _ in range(4)]
    keys = [f"data/{i:05d}" for i in range(total // size)]
    for phase, call in (
        ("put", lambda k: put(k, payloads[hash(k) % 4])),
        ("get", get),
    ):
        cpu0, srv0, t0 = _cpu(), _server_cpu(server.process.proc.pid), time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(call, keys))
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        srv = _server_cpu(server.process.proc.pid) - srv0
        mib = total / MiB
        print(
            f"{name:8} x{threads:<2} {phase}: {wall:6.2f} s wall ({mib / wall:5.0f} MiB/s), "
            f"client CPU {cpu:5.2f} s, server CPU {srv:5.2f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--total", type=int, default=512, help="MiB moved per phase")
    parser.add_argument("--object", type=int, default=16, help="object size in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3-clients-") as tmp:
        server = start_seaweedfs(Path(tmp))
        try:
            for threads in (1, 8):
                for name in ("boto3", "obstore"):
                    run(server, name, threads, args.total * MiB, args.object * MiB)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
