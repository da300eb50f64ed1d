"""open_database on the private cluster: migrated and with procrastinate's schema, usable
by procrastinate, and safe when several processes open it at the same moment."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from procrastinate import App, PsycopgConnector
from sqlalchemy import inspect, text

from safehold.catalog import migrate
from safehold.errors import DatabaseError
from safehold.service.cluster import Cluster
from safehold.service.database import open_database
from tests.servers.private_cluster import database_url, fresh_database, run_python

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

StateDirs = Callable[[], Path]


def test_a_private_database_is_migrated_and_queues_jobs(make_state_dir: StateDirs) -> None:
    state_dir = make_state_dir()
    with open_database(None, state_dir) as db:
        assert db.cluster is not None and db.cluster.state_dir == state_dir
        assert db.display_url.startswith("postgresql://safehold@/safehold?host=")
        with db.engine.connect() as conn:
            assert migrate.current(conn) == migrate.head()
            tables = set(inspect(conn).get_table_names())
        assert {"plans", "slots", "runs", "procrastinate_jobs"} <= tables
        # procrastinate itself, through the connection string it is given.
        app = App(connector=PsycopgConnector(conninfo=db.conninfo))

        @app.task(name="noop", queue="test")
        def noop() -> None: ...

        with app.open():
            job_id = noop.defer()
        with db.engine.connect() as conn:
            status = conn.execute(
                text("SELECT status FROM procrastinate_jobs WHERE id = :id"), {"id": job_id}
            )
            assert status.scalar() == "todo"
    # Opened again: nothing to migrate, nothing to install, the job still there.
    with open_database(None, state_dir) as db, db.engine.connect() as conn:
        count = conn.execute(text("SELECT count(*) FROM procrastinate_jobs")).scalar()
        assert count == 1


def _opener(target: str, start_at: float) -> str:
    """A process that opens the database at ``start_at`` (so that both start together) and
    prints the catalog's revision and whether the queue's table is there."""
    return (
        "import time\n"
        "from pathlib import Path\n"
        "from sqlalchemy import text\n"
        "from safehold.catalog import migrate\n"
        "from safehold.service.database import open_database\n"
        f"time.sleep(max(0.0, {start_at!r} - time.time()))\n"
        f"with open_database({target}) as db, db.engine.connect() as conn:\n"
        "    queue = conn.execute(text(\"SELECT to_regclass('procrastinate_jobs')\")).scalar()\n"
        "    print(migrate.current(conn), queue is not None)\n"
    )


def _race(target: str) -> None:
    start_at = time.time() + 3.0  # both interpreters have imported everything by then
    children = [run_python(_opener(target, start_at)) for _ in range(2)]
    for child in children:
        out, err = child.communicate(timeout=180)
        assert child.returncode == 0, err
        assert out.split() == [migrate.head(), "True"]


def test_two_processes_open_a_new_private_cluster_at_once(make_state_dir: StateDirs) -> None:
    """One initdb, one start, one migration: the other process joins and finds it done."""
    state_dir = make_state_dir()
    _race(f"None, Path({str(state_dir)!r})")
    assert not (state_dir / "postgresql" / "data.new").exists()


def test_two_processes_migrate_one_shared_database_at_once(private_cluster: Cluster) -> None:
    fresh_database(private_cluster, "race").dispose()
    url = database_url(private_cluster, "race").set(drivername="postgresql")
    _race(repr(url.render_as_string(hide_password=False)))
    with open_database(url.render_as_string(hide_password=False)) as db:
        with db.engine.connect() as conn:
            versions = conn.execute(text(f"SELECT count(*) FROM {migrate.VERSION_TABLE}"))
            assert versions.scalar() == 1
        assert db.cluster is None  # a server given by URL is not ours to stop


def test_a_catalog_newer_than_this_safehold(private_cluster: Cluster) -> None:
    engine = fresh_database(private_cluster, "newer")
    with engine.begin() as conn:
        migrate.upgrade(conn)
        conn.execute(text(f"UPDATE {migrate.VERSION_TABLE} SET version_num = 'fffe'"))
    engine.dispose()
    url = database_url(private_cluster, "newer").set(drivername="postgresql")
    with pytest.raises(DatabaseError, match="does not know") as caught:
        with open_database(url.render_as_string(hide_password=False)):
            pass
    assert caught.value.hint is not None and "upgrade safehold" in caught.value.hint
