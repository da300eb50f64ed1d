"""The catalog's Alembic migrations on a real PostgreSQL: up and down from an empty
database, and exactly the schema the models describe (so the two cannot drift)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from safehold.catalog import Base, migrate
from safehold.service.cluster import Cluster
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("catalog_cluster")]

TABLES = set(Base.metadata.tables)


def test_up_from_empty_and_down_to_nothing(private_cluster: Cluster) -> None:
    engine = fresh_database(private_cluster, "updown")
    try:
        with engine.begin() as conn:
            assert migrate.current(conn) is None
            migrate.upgrade(conn)
            assert migrate.current(conn) == migrate.head()
            assert TABLES | {migrate.VERSION_TABLE} == set(inspect(conn).get_table_names())
        with engine.begin() as conn:
            migrate.upgrade(conn)  # already at head: nothing to do
            migrate.downgrade(conn, "base")
            assert migrate.current(conn) is None
            assert set(inspect(conn).get_table_names()) == {migrate.VERSION_TABLE}
        with engine.begin() as conn:
            migrate.upgrade(conn)  # and up again, from what down left
            assert set(inspect(conn).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_the_models_are_what_the_migrations_make(private_cluster: Cluster) -> None:
    engine = fresh_database(private_cluster, "compare")
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "version_table": migrate.VERSION_TABLE,
                    "compare_type": True,
                    "compare_server_default": True,
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_a_change_to_the_models_alone_is_seen(private_cluster: Cluster) -> None:
    """The comparison above is not vacuous: a column the migrations lack is a difference."""
    from sqlalchemy import Column, MetaData, Table, Text

    engine = fresh_database(private_cluster, "drift")
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn)
        drifted = MetaData(naming_convention=Base.metadata.naming_convention)
        for table in Base.metadata.sorted_tables:
            table.to_metadata(drifted)
        Table("workers", drifted, Column("version", Text()), extend_existing=True)
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": migrate.VERSION_TABLE}
            )
            diff = compare_metadata(context, drifted)
        assert [d[0] for d in diff] == ["add_column"]
    finally:
        engine.dispose()


def test_restore_points_start_from_the_succeeded_backups(private_cluster: Cluster) -> None:
    """The migration that adds restore points fills them from what the runs already say:
    a succeeded backup's snapshot, not a failed one's or a retention's."""
    engine = fresh_database(private_cluster, "points")
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, "0002")
            plan = conn.execute(
                text(
                    "INSERT INTO plans (name, origin, schedule) VALUES ('db', 'file', '@daily') "
                    "RETURNING id"
                )
            ).scalar_one()
            for state, kind, snap in [
                ("succeeded", "backup", "a" * 64),
                ("failed", "backup", None),
                ("succeeded", "retention", None),
            ]:
                conn.execute(
                    text(
                        "INSERT INTO runs (id, plan_id, kind, trigger, state, snapshot_id, "
                        "ended_at, bytes_added) VALUES (gen_random_uuid(), :p, :k, 'manual', "
                        ":s, :snap, now(), 7)"
                    ),
                    {"p": plan, "k": kind, "s": state, "snap": snap},
                )
            migrate.upgrade(conn)
            points = conn.execute(
                text("SELECT snapshot_id, bytes_added, held_at FROM restore_points")
            ).all()
        assert [tuple(p) for p in points] == [("a" * 64, 7, None)]
    finally:
        engine.dispose()
