"""Destinations made through the service: validated as the file's, shown without their
credentials, and never in clear in the catalog."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from safehold.errors import ConfigError, Conflict, NotFound, UsageError
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.destinations import (
    create_destination,
    delete_destination,
    destination_block,
    get_destination,
    list_destinations,
    update_destination,
)
from safehold.service.vault import Vault
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

PASSWORD = "pw-9f1c2e-never-in-clear"
OPTION_SECRET = "opt-77aa31-never-in-clear"


@pytest.fixture
def engine(private_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Engine]:
    engine = fresh_database(private_cluster, "dest_" + request.node.name[:40].lower())
    prepare(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def catalog_text(engine: Engine) -> str:
    """Every row of every table of the catalog as text, bytea columns included (as a
    pg_dump of the data would hold them)."""
    with engine.connect() as db:
        tables = db.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ).scalars()
        dump = []
        for table in list(tables):
            rows = db.execute(text(f'SELECT t::text FROM "{table}" t')).scalars()
            dump += list(rows)
        raw = db.execute(text("SELECT sealed FROM destinations")).scalars()
        dump += [bytes(b).decode("latin-1") for b in raw]
    return "\n".join(dump)


def block() -> dict[str, object]:
    return {
        "location": f"s3:https://admin:{PASSWORD}@127.0.0.1:9000/bucket/prefix",
        "password": PASSWORD,
        "options": {"secret_access_key": OPTION_SECRET, "region": "eu-west-1"},
        "max_concurrent_jobs": 2,
    }


def test_a_destination_is_shown_and_stored_without_its_credentials(
    engine: Engine, tmp_path: Path
) -> None:
    vault = Vault(engine, tmp_path / "service.key")
    made = create_destination(engine, vault, "p1", "s3-main", block())
    assert made.location == "s3:https://127.0.0.1:9000/bucket/prefix"
    assert made.format == "repository" and made.options == ["region", "secret_access_key"]
    for view in (made, get_destination(engine, "p1", "s3-main"), *list_destinations(engine, "p1")):
        shown = repr(view) + str(view.to_json())
        assert PASSWORD not in shown and OPTION_SECRET not in shown
    assert list_destinations(engine, "p2") == []
    dump = catalog_text(engine)
    assert "s3-main" in dump  # the scan does see the rows
    assert PASSWORD not in dump and OPTION_SECRET not in dump
    # The service itself gets the whole block back.
    with engine.connect() as db:
        opened = destination_block(db, vault, "p1", "s3-main")
    assert opened["password"] == PASSWORD
    assert opened["options"]["secret_access_key"] == OPTION_SECRET


def test_names_are_unique_per_project(engine: Engine, tmp_path: Path) -> None:
    vault = Vault(engine, tmp_path / "service.key")
    create_destination(engine, vault, "p1", "d", {"location": "/srv/a", "password": "x"})
    create_destination(engine, vault, "p2", "d", {"location": "/srv/b", "password": "x"})
    with pytest.raises(Conflict, match="already has a destination"):
        create_destination(engine, vault, "p1", "d", {"location": "/srv/c", "password": "x"})
    with pytest.raises(UsageError, match="not valid"):
        create_destination(engine, vault, "p1", "bad name", {"location": "/x"})


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ({"password": "x"}, "destination p1/d: location: field required"),
        ({"location": "/x", "password": "a", "password_env": "B"}, "give one way"),
        ({"location": "/x", "max_concurrent_jobs": 0}, "destination p1/d: max_concurrent_jobs:"),
        ({"location": "/x", "colour": "red"}, "destination p1/d: colour: unknown key"),
        ({"location": "/x", "format": "zip"}, "destination p1/d: format:"),
    ],
)
def test_validation_names_the_key(
    engine: Engine, tmp_path: Path, given: dict[str, object], said: str
) -> None:
    vault = Vault(engine, tmp_path / "service.key")
    with pytest.raises(ConfigError) as caught:
        create_destination(engine, vault, "p1", "d", given)
    assert said in str(caught.value)


def test_an_update_merges_over_what_is_stored(engine: Engine, tmp_path: Path) -> None:
    vault = Vault(engine, tmp_path / "service.key")
    create_destination(engine, vault, "p1", "d", block())
    # The client cannot read the password back, so it need not send it again.
    view = update_destination(engine, vault, "p1", "d", {"max_concurrent_jobs": 5, "options": None})
    assert view.options == [] and view.updated_at >= view.created_at
    with engine.connect() as db:
        opened = destination_block(db, vault, "p1", "d")
    assert opened["password"] == PASSWORD and opened["max_concurrent_jobs"] == 5
    assert "options" not in opened
    with pytest.raises(ConfigError, match="give one way"):
        update_destination(engine, vault, "p1", "d", {"password_env": "PW"})
    with pytest.raises(NotFound):
        update_destination(engine, vault, "p1", "nope", {"max_concurrent_jobs": 1})


def test_delete(engine: Engine, tmp_path: Path) -> None:
    vault = Vault(engine, tmp_path / "service.key")
    create_destination(engine, vault, "p1", "d", block())
    delete_destination(engine, "p1", "d")
    assert list_destinations(engine, "p1") == []
    with pytest.raises(NotFound, match="no destination 'd'"):
        delete_destination(engine, "p1", "d")
