"""Each real-server backend reached through a :class:`~tests.servers.proxy.FaultProxy`, for
the failure-mode suite (``test_failure_modes.py``).

``PROXIED[name](request, proxy)`` picks a fresh location on the session's server of that
backend and returns an :data:`Opener`: ``open(timeout, good_credentials)`` opens a storage at
that location whose every connection goes through ``proxy``, with ``timeout`` seconds as its
connect and read timeouts, and with the server's credentials or with wrong ones. The first
opening with good credentials creates the location. Where a backend cannot be given wrong
credentials, ``open`` skips with the reason.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from safehold.storage.base import Storage
from tests.servers.proxy import FaultProxy

__all__ = ["PROXIED", "Opener", "server_port"]

Opener = Callable[[float, bool], Storage]


def server_port(name: str, request: pytest.FixtureRequest) -> int:
    """The port the proxy forwards to: the session server of backend ``name``."""
    fixture, attribute = {
        "s3": ("s3_server", "port"),
        "azure": ("azurite", "port"),
        "gcs": ("fake_gcs", "port"),
        "sftp": ("sftp_server", "port"),
        "swift": ("swift_server", "proxy_port"),
    }[name]
    return int(getattr(request.getfixturevalue(fixture), attribute))


def _s3(request: pytest.FixtureRequest, proxy: FaultProxy) -> Opener:
    from safehold.storage.s3 import from_location
    from tests.servers.s3 import SeaweedS3, unique_bucket

    server: SeaweedS3 = request.getfixturevalue("s3_server")
    location = f"{proxy.url}/{unique_bucket('fail')}/repo"

    def open_(timeout: float, good: bool) -> Storage:
        options = server.options(connect_timeout=timeout, read_timeout=timeout)
        if not good:
            options["secret_access_key"] = "not-the-secret"
        return from_location(location, create=good, options=options)

    return open_


def _azure(request: pytest.FixtureRequest, proxy: FaultProxy) -> Opener:
    from safehold.storage.azure import from_location
    from tests.servers.azure import ACCOUNT, Azurite, drop_container, unique_container

    server: Azurite = request.getfixturevalue("azurite")
    container = unique_container()
    request.addfinalizer(lambda: drop_container(server, container))

    def open_(timeout: float, good: bool) -> Storage:
        options = server.options(
            endpoint=f"{proxy.url}/{ACCOUNT}", connect_timeout=timeout, read_timeout=timeout
        )
        if not good:  # a well-formed key, but not the account's
            options["account_key"] = base64.b64encode(b"not the key" * 6).decode()
        return from_location(f"{container}/repo", create=good, options=options)

    return open_


def _gcs(request: pytest.FixtureRequest, proxy: FaultProxy) -> Opener:
    from safehold.storage.gcs import from_location
    from tests.servers.gcs import FakeGcs, drop_bucket, unique_bucket

    server: FakeGcs = request.getfixturevalue("fake_gcs")
    bucket = unique_bucket()
    request.addfinalizer(lambda: drop_bucket(server, bucket))

    def open_(timeout: float, good: bool) -> Storage:
        if not good:
            pytest.skip("fake-gcs-server checks no credentials: none can be wrong")
        options = server.options(endpoint=proxy.url, connect_timeout=timeout, read_timeout=timeout)
        return from_location(f"{bucket}/repo", create=True, options=options)

    return open_


def _sftp(request: pytest.FixtureRequest, proxy: FaultProxy) -> Opener:
    from safehold.storage.sftp import fingerprint, from_location
    from tests.servers.sftp import SftpServer

    server: SftpServer = request.getfixturevalue("sftp_server")
    folder = server.fast_folder()
    # Pinned by fingerprint: a known_hosts line names the server's own port, not the proxy's.
    blob = base64.b64decode(server.host_key.with_suffix(".pub").read_text().split()[1])

    def open_(timeout: float, good: bool) -> Storage:
        options = server.options(
            host_key=fingerprint(blob), timeout=timeout, connect_timeout=timeout
        )
        if not good:
            options["key_file"] = str(server.other_key)
        return from_location(f"root@127.0.0.1:{proxy.port}{folder}", create=good, options=options)

    return open_


def _swift(request: pytest.FixtureRequest, proxy: FaultProxy) -> Opener:
    from swiftclient import client as swiftclient  # type: ignore[import-untyped]

    from safehold.storage.swift import from_location
    from tests.servers.swift import KEY, USER, SwiftServer

    server: SwiftServer = request.getfixturevalue("swift_server")
    container = f"fail-{uuid.uuid4().hex[:12]}"
    # TempAuth hands out a storage URL on the server's own port: the token is fetched here
    # and the storage URL pointed at the proxy (a pre-authenticated location).
    storage_url, token = swiftclient.get_auth_1_0(server.auth_url, USER, KEY, snet=False)
    account = str(storage_url).rsplit("/", 1)[1]

    def open_(timeout: float, good: bool) -> Storage:
        options: dict[str, Any] = {"timeout": timeout, "connect_timeout": timeout}
        if good:
            options.update(storage_url=f"{proxy.url}/v1/{account}", auth_token=str(token))
        else:
            proxied_auth = server.auth_url.replace(f":{server.proxy_port}/", f":{proxy.port}/")
            options.update(auth_url=proxied_auth, user=USER, key="not-the-key")
        return from_location(f"{container}/repo", create=good, options=options)

    return open_


PROXIED: dict[str, Callable[[pytest.FixtureRequest, FaultProxy], Opener]] = {
    "s3": _s3,
    "azure": _azure,
    "gcs": _gcs,
    "sftp": _sftp,
    "swift": _swift,
}
