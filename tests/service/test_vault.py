"""The service's key and sealing: a key made once however many start at once, sealed
values bound to their object, and a clear error for a process holding another key."""

from __future__ import annotations

import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from safehold.errors import ServiceKeyError
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.vault import (
    KEY_FILE_ENV,
    Vault,
    destination_aad,
    key_file_path,
    load_or_create_key,
)
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


@pytest.fixture
def engine(private_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Engine]:
    engine = fresh_database(private_cluster, "vault_" + request.node.name[:40].lower())
    prepare(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_the_key_file_is_made_once_0600_even_when_many_start_at_once(tmp_path: Path) -> None:
    path = tmp_path / "state" / "service.key"
    keys: list[bytes] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["service.key"]  # no temporary left
    assert load_or_create_key(path) == keys[0]


def test_where_the_key_lives(tmp_path: Path) -> None:
    assert key_file_path(None, tmp_path, {}) == tmp_path / "service.key"
    assert key_file_path(None, tmp_path, {KEY_FILE_ENV: "/k"}) == Path("/k")
    assert key_file_path("/cfg", tmp_path, {KEY_FILE_ENV: "/k"}) == Path("/cfg")


def test_a_broken_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "service.key"
    path.write_text("not a key\n")
    with pytest.raises(ServiceKeyError, match="not a safehold service key"):
        load_or_create_key(path)


def test_sealed_values_open_only_for_their_object(engine: Engine, tmp_path: Path) -> None:
    vault = Vault(engine, tmp_path / "service.key")
    aad = destination_aad("p1", "s3")
    sealed = vault.seal(b"hunter2", aad=aad)
    assert b"hunter2" not in sealed and sealed[:1] == b"\x01"
    assert vault.open(sealed, aad=aad) == b"hunter2"
    assert vault.seal(b"hunter2", aad=aad) != sealed  # a fresh nonce each time
    with pytest.raises(ServiceKeyError, match="copied from another object"):
        vault.open(sealed, aad=destination_aad("p2", "s3"))
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ServiceKeyError, match="altered"):
        vault.open(tampered, aad=aad)
    assert "hunter2" not in repr(vault)


def test_another_key_on_the_same_catalog_is_a_clear_error(engine: Engine, tmp_path: Path) -> None:
    first = Vault(engine, tmp_path / "a" / "service.key")
    sealed = first.seal(b"secret", aad=b"x")
    # A second machine on the same database that was not given the key file.
    second = Vault(engine, tmp_path / "b" / "service.key")
    with pytest.raises(ServiceKeyError) as caught:
        second.open(sealed, aad=b"x")
    assert "not the key this catalog's secrets were sealed with" in caught.value.message
    assert caught.value.hint is not None and "copy the key file" in caught.value.hint
    assert "service.key_file" in caught.value.hint
    # Given a copy of the file, it opens.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "service.key").write_bytes((tmp_path / "a" / "service.key").read_bytes())
    assert Vault(engine, tmp_path / "c" / "service.key").open(sealed, aad=b"x") == b"secret"
