"""A plan made through the API may carry ping: URLs: they are credentials, so the catalog
keeps them sealed like a source's passwords, never in clear."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from safehold.service.api_plans import SEALED, create_plan
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.destinations import create_destination
from safehold.service.vault import Vault
from tests.conftest import PASSWORD
from tests.servers.private_cluster import fresh_database
from tests.service.test_destinations import catalog_text

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

TOKEN = "5d1c0a2e-7f3b-4c55-9a0e-2b8f7d6e1a90"


@pytest.fixture
def engine(private_cluster: Cluster) -> Iterator[Engine]:
    engine = fresh_database(private_cluster, "alerts_api_plans")
    prepare(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def test_an_api_plan_s_ping_urls_are_sealed(engine: Engine, tmp_path: Path, cli_repo: str) -> None:
    vault = Vault(engine, tmp_path / "service.key")
    create_destination(
        engine, vault, "p1", "main", {"location": cli_repo, "password": PASSWORD.decode()}
    )
    block = {
        "type": "directory", "paths": [str(tmp_path)], "schedule": "@daily",
        "repository": "main", "rpo_target": "26h",
        "ping": {"start": f"https://hc-ping.com/{TOKEN}/start",
                 "success": f"https://hc-ping.com/{TOKEN}"},
    }  # fmt: skip
    made = create_plan(engine, vault, "p1", "job", block)
    assert made is not None
    dump = catalog_text(engine)
    assert TOKEN not in dump
    assert SEALED in dump and "26h" in dump
