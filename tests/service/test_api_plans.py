"""Plans made through the service: validated as the file's, run by a real worker child
with the destination's password only sealed in the catalog, changed and deleted; a file's
plan is read-only here."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from procrastinate import App, PsycopgConnector
from sqlalchemy import Engine, text

from safehold.catalog import RunKind, RunTrigger
from safehold.config import parse_config
from safehold.errors import ConfigError, Conflict, NotFound, UsageError
from safehold.service.api_plans import (
    PlanCache,
    RunEnv,
    create_plan,
    delete_plan,
    drill_rows,
    get_plan,
    list_plans,
    listed_plans,
    plans_from_catalog,
    update_plan,
)
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.destinations import (
    create_destination,
    delete_destination,
    update_destination,
)
from safehold.service.jobs import Jobs, register
from safehold.service.plans import PlanSpec, plans_from_config, sync_plans
from safehold.service.vault import Vault
from tests.conftest import PASSWORD, CliRunner
from tests.servers.private_cluster import fresh_database
from tests.service.test_destinations import catalog_text

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


@dataclass
class Setup:
    engine: Engine
    conninfo: str
    tmp: Path
    repo: str
    vault: Vault

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    def block(self, **extra: Any) -> dict[str, Any]:
        return {
            "type": "directory",
            "paths": [str(self.tmp / "data")],
            "schedule": "@daily",
            "repository": "main",
            **extra,
        }


@pytest.fixture
def setup(
    private_cluster: Cluster,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cli_repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    name = "apiplans_" + request.node.name[:40].lower()
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    # The worker's child gets the password from the catalog only.
    monkeypatch.delenv("SAFEHOLD_PASSWORD", raising=False)
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file").write_text("some data\n")
    vault = Vault(engine, tmp_path / "state" / "service.key")
    create_destination(
        engine, vault, "p1", "main", {"location": cli_repo, "password": PASSWORD.decode()}
    )
    try:
        yield Setup(engine, private_cluster.conninfo(name), tmp_path, cli_repo, vault)
    finally:
        engine.dispose()


def execute(
    setup: Setup, specs: dict[str, PlanSpec], key: str, kind: RunKind = RunKind.BACKUP
) -> dict[str, Any]:
    async def go() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.state, worker="w")
            run_id = await asyncio.to_thread(
                jobs.new_run, key, trigger=RunTrigger.MANUAL, kind=kind
            )
            await jobs.execute(run_id)
            return run_id

    run_id = asyncio.run(go())
    with setup.engine.connect() as db:
        row = db.execute(text("SELECT * FROM runs WHERE id = :r"), {"r": run_id}).one()
    return dict(row._mapping)


def test_an_api_plan_backs_up_with_a_password_only_sealed_in_the_catalog(
    setup: Setup, cli: CliRunner
) -> None:
    # A hook that prints its environment: the destination's variables are not in it.
    hooks = {"post-backup-unlock": "env"}
    made = create_plan(setup.engine, setup.vault, "p1", "job", setup.block(retries=1, hooks=hooks))
    assert made.origin == "api" and made.repository == "main" and made.schedule == "@daily"
    specs = plans_from_catalog(setup.engine, setup.vault, setup.state)
    spec = specs["p1/job"]
    generated = Path(spec.config_path)
    assert generated == setup.state / "plans" / "p1" / "job.yaml"
    assert stat.S_IMODE(generated.stat().st_mode) == 0o600
    content = generated.read_text()
    assert PASSWORD.decode() not in content and "${SAFEHOLD_SECRET_" in content
    assert spec.retries == 1 and PASSWORD.decode() not in repr(spec)

    run = execute(setup, specs, "p1/job")
    assert run["state"] == "succeeded", run["error"]
    snaps = json.loads(cli("-r", setup.repo, "snapshots", "--json").stdout)
    assert len(snaps) == 1 and run["snapshot_id"] in json.dumps(snaps)
    printed = json.dumps(run["phases"], default=str)
    assert "PATH=" in printed and "SAFEHOLD_SECRET_" not in printed
    # Nothing of the run (its lines, its record) nor any row holds the password in clear.
    assert PASSWORD.decode() not in catalog_text(setup.engine)


def test_update_and_delete(setup: Setup) -> None:
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block())
    changed = update_plan(
        setup.engine, setup.vault, "p1", "job", setup.block(schedule="0 3 * * *", paused=True)
    )
    assert changed.schedule == "0 3 * * *" and changed.source is not None
    assert changed.source["paused"] is True
    spec = plans_from_catalog(setup.engine, setup.vault, setup.state)["p1/job"]
    assert spec.paused and spec.schedule.expression == "0 3 * * *"
    # With a cache, an unchanged plan is not built again; a changed one is.
    cache: PlanCache = {}
    first = plans_from_catalog(setup.engine, setup.vault, setup.state, cache=cache)["p1/job"]
    again = plans_from_catalog(setup.engine, setup.vault, setup.state, cache=cache)["p1/job"]
    assert again is first
    update_plan(setup.engine, setup.vault, "p1", "job", setup.block(schedule="0 4 * * *"))
    changed = plans_from_catalog(setup.engine, setup.vault, setup.state, cache=cache)["p1/job"]
    assert changed is not first and changed.schedule.expression == "0 4 * * *"
    update_destination(setup.engine, setup.vault, "p1", "main", {"max_concurrent_jobs": 3})
    limited = plans_from_catalog(setup.engine, setup.vault, setup.state, cache=cache)["p1/job"]
    assert limited.limits == ((setup.repo, 3),)
    # The destination is in use: it stays.
    with pytest.raises(Conflict) as caught:
        delete_destination(setup.engine, "p1", "main")
    assert caught.value.hint is not None and "job" in caught.value.hint
    delete_plan(setup.engine, "p1", "job")
    with pytest.raises(NotFound):
        get_plan(setup.engine, "p1", "job")
    assert plans_from_catalog(setup.engine, setup.vault, setup.state) == {}
    assert not (setup.state / "plans" / "p1" / "job.yaml").exists()  # its file is gone
    delete_destination(setup.engine, "p1", "main")


def test_a_file_plan_is_read_only_here(setup: Setup) -> None:
    config = parse_config(
        f"repository: {setup.repo}\nsources:\n  nightly:\n    type: directory\n"
        f"    paths: [{setup.tmp / 'data'}]\n    schedule: '@daily'\n    project: p1\n"
    )
    sync_plans(setup.engine, plans_from_config(config).values())
    with pytest.raises(Conflict, match="configuration file") as caught:
        update_plan(setup.engine, setup.vault, "p1", "nightly", setup.block())
    assert caught.value.http_status == 409
    with pytest.raises(Conflict, match="configuration file"):
        delete_plan(setup.engine, "p1", "nightly")
    with pytest.raises(Conflict, match="already has a plan 'nightly'"):
        create_plan(setup.engine, setup.vault, "p1", "nightly", setup.block())
    assert get_plan(setup.engine, "p1", "nightly").origin == "file"
    assert [p.name for p in list_plans(setup.engine, "p1")] == ["nightly"]
    # Another project may use the name.
    create_destination(setup.engine, setup.vault, "p2", "main", {"location": setup.repo})
    assert create_plan(setup.engine, setup.vault, "p2", "nightly", setup.block()).project == "p2"


def test_a_file_plan_does_not_take_over_an_api_plan(setup: Setup) -> None:
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block())
    config = parse_config(
        f"repository: {setup.repo}\nsources:\n  job:\n    type: directory\n"
        f"    paths: [{setup.tmp / 'data'}]\n    schedule: '@hourly'\n    project: p1\n"
    )
    assert sync_plans(setup.engine, plans_from_config(config).values()) == {}
    assert get_plan(setup.engine, "p1", "job").origin == "api"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"paths": None}, "sources.job.paths: field required"),
        ({"schedule": "every tuesday"}, "sources.job.schedule:"),
        ({"retries": -1}, "sources.job.retries:"),
        ({"colour": "red"}, "sources.job.colour: unknown key"),
        ({"schedule": None}, "sources.job.schedule: field required"),
        ({"repository": None}, "repository: field required"),
        ({"repository": "elsewhere"}, "no destination 'elsewhere'"),
        ({"copies": ["nowhere"]}, "no destination 'nowhere'"),
        ({"project": "p2"}, "project: the block says 'p2'"),
        ({"hooks": {"backup-cleanup": "echo ${SAFEHOLD_SECRET_1}"}}, "SAFEHOLD_SECRET_N"),
    ],
)
def test_validation_names_the_key(setup: Setup, change: dict[str, Any], said: str) -> None:
    block = {k: v for k, v in {**setup.block(), **change}.items() if v is not None}
    with pytest.raises((ConfigError, UsageError)) as caught:
        create_plan(setup.engine, setup.vault, "p1", "job", block)
    assert said in str(caught.value)
    with pytest.raises(NotFound):
        get_plan(setup.engine, "p1", "job")


def test_copies_go_to_further_destinations_without_secrets_in_the_file(
    setup: Setup, cli: CliRunner
) -> None:
    other = str(setup.tmp / "copy")
    made = cli("-r", other, "init", "--kdf-log2n", "10", env={"SAFEHOLD_PASSWORD": "copy-pw-3e1"})
    assert made.code == 0, made.output
    create_destination(
        setup.engine, setup.vault, "p1", "copy", {"location": other, "password": "copy-pw-3e1"}
    )
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block(copies=["copy"]))
    specs = plans_from_catalog(setup.engine, setup.vault, setup.state)
    content = Path(specs["p1/job"].config_path).read_text()
    assert "copy-pw-3e1" not in content and PASSWORD.decode() not in content
    assert "name: copy" in content
    run = execute(setup, specs, "p1/job")
    assert run["state"] == "succeeded" and not run["error"], run["error"]
    copied = cli("-r", other, "snapshots", "--json", env={"SAFEHOLD_PASSWORD": "copy-pw-3e1"})
    assert len(json.loads(copied.stdout)) == 1, copied.output
    with pytest.raises(Conflict, match="used by 1 plan"):
        delete_destination(setup.engine, "p1", "copy")


def test_the_service_follows_api_plans_and_a_worker_finds_a_new_one(setup: Setup) -> None:
    from safehold.service.database import Database
    from safehold.service.serve import ServeOptions, Service

    config_path = setup.tmp / "safehold.yaml"
    config_path.write_text(
        f"repository: {setup.repo}\nservice: {{key_file: {setup.vault.key_file}}}\n"
        f"sources:\n  nightly:\n    type: directory\n    paths: [{setup.tmp / 'data'}]\n"
        "    schedule: '@daily'\n"
    )
    app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
    database = Database(setup.engine, setup.conninfo, "test")
    service = Service(
        ServeOptions(config_path=str(config_path)),
        parse_config(config_path.read_text(), path=str(config_path)),
        database,
        app,
        setup.state,
    )
    assert set(service.specs) == {"default/nightly"}
    assert service.refresh_api_plans() is False  # nothing changed: nothing read
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block())
    # A worker asked for the new plan before the next look reads it at once.
    assert service.jobs.spec("p1/job") is not None
    assert set(service.specs) == {"default/nightly", "p1/job"}
    assert service.ids["p1/job"] != service.ids["default/nightly"]
    assert service.refresh_api_plans() is False
    update_plan(setup.engine, setup.vault, "p1", "job", setup.block(schedule="@hourly"))
    assert service.refresh_api_plans() is True
    assert service.specs["p1/job"].schedule.expression == "@hourly"
    # Its drill plan is ticked beside it, with a row of its own.
    update_plan(setup.engine, setup.vault, "p1", "job", setup.block(drill={"schedule": "@daily"}))
    assert service.refresh_api_plans() is True
    assert service.specs["p1/job.drill"].kind is RunKind.DRILL
    drill_id = service.ids["p1/job.drill"]
    assert drill_id not in (service.ids["p1/job"], service.ids["default/nightly"])
    # A plan made before drill plans had rows: the service writes its drill's row.
    with setup.engine.begin() as db:
        db.execute(text("DELETE FROM plans WHERE name = 'job.drill'"))
    assert service.refresh_api_plans() is True
    assert service.ids["p1/job.drill"] == _drill_row(setup).id != drill_id
    delete_plan(setup.engine, "p1", "job")
    assert service.refresh_api_plans() is True
    assert set(service.specs) == {"default/nightly"} and set(service.ids) == set(service.specs)
    assert service.jobs.spec("p1/job") is None


def test_a_run_whose_secrets_do_not_open_fails_with_the_reason(setup: Setup) -> None:
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block())
    spec = plans_from_catalog(setup.engine, setup.vault, setup.state)["p1/job"]
    # The worker's machine holds another key than the one that sealed the destination.
    stranger = Vault(setup.engine, setup.tmp / "stranger.key")
    settings = {"source": setup.block(), "repository": "main", "copies": []}
    spec = replace(spec, env=RunEnv(setup.engine, stranger, "p1", "job", settings))
    run = execute(setup, {"p1/job": spec}, "p1/job")
    assert run["state"] == "failed"
    assert "not the key this catalog's secrets were sealed with" in run["error"]
    assert "copy the key file" in run["hint"]


def test_a_source_credential_is_sealed_too(setup: Setup) -> None:
    url = "postgresql://backup:src-pw-5d2c@127.0.0.1:5432/shop"
    block = {
        "type": "postgres",
        "url": url,
        "password": "other-pw-8e1f",
        "schedule": "@daily",
        "repository": "main",
        "hooks": {"post-backup-unlock": "true"},
    }
    made = create_plan(setup.engine, setup.vault, "p1", "pg", block)
    assert made.source is not None
    assert made.source["url"] == "<sealed>" and made.source["password"] == "<sealed>"
    assert made.source["hooks"] == {"post-backup-unlock": "true"}  # not a credential
    dump = catalog_text(setup.engine)
    assert "src-pw-5d2c" not in dump and "other-pw-8e1f" not in dump
    spec = plans_from_catalog(setup.engine, setup.vault, setup.state)["p1/pg"]
    content = Path(spec.config_path).read_text()
    assert "src-pw-5d2c" not in content and "other-pw-8e1f" not in content
    assert spec.env is not None and isinstance(spec.env, RunEnv)
    values = set(spec.env().values())
    assert url in values and "other-pw-8e1f" in values and PASSWORD.decode() in values
    # The document read with those values gives the source its credentials back.
    config = parse_config(content, path=spec.config_path, env=spec.env())
    settings = config.sources["pg"].settings
    assert settings.url.get_secret_value() == url  # type: ignore[attr-defined]
    # The block as shown, sent back with a change: the sealed values stay what they were.
    shown = {**made.source, "schedule": "@hourly", "repository": "main"}
    update_plan(setup.engine, setup.vault, "p1", "pg", shown)
    spec = plans_from_catalog(setup.engine, setup.vault, setup.state)["p1/pg"]
    assert spec.env is not None and url in set(spec.env().values())
    assert spec.schedule.expression == "@hourly"


def test_an_archive_cannot_be_a_plans_repository(setup: Setup) -> None:
    create_destination(
        setup.engine, setup.vault, "p1", "tars", {"location": str(setup.tmp / "t"),
                                                 "format": "archive"}
    )  # fmt: skip
    with pytest.raises(UsageError, match="repository: destination 'tars' is an archive"):
        create_plan(setup.engine, setup.vault, "p1", "job", setup.block(repository="tars"))


def _drill_row(setup: Setup, name: str = "job.drill") -> Any:
    with setup.engine.connect() as db:
        return db.execute(
            text("SELECT id, origin, schedule, settings FROM plans WHERE project = 'p1' "
                 "AND name = :n"),
            {"n": name},
        ).one_or_none()  # fmt: skip


def test_a_drill_block_makes_a_drill_plan_run_with_the_plans_secrets(setup: Setup) -> None:
    drill = {"schedule": "@hourly", "target": "rotating", "rto_target": "10m"}
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block(drill=drill))
    row = _drill_row(setup)
    assert row is not None and row.origin == "api" and row.schedule == "@hourly"
    assert row.settings["drill_of"] == "job" and row.settings["kind"] == "drill"
    assert [p.name for p in list_plans(setup.engine, "p1")] == ["job", "job.drill"]
    specs = plans_from_catalog(setup.engine, setup.vault, setup.state)
    assert set(specs) == {"p1/job", "p1/job.drill"}
    plan, spec = specs["p1/job"], specs["p1/job.drill"]
    assert spec.kind is RunKind.DRILL and spec.origin == "api" and spec.on_overlap == "skip"
    assert spec.config_path == plan.config_path and spec.repository == setup.repo
    assert spec.env is not None and PASSWORD.decode() in spec.env().values()
    assert PASSWORD.decode() not in repr(spec)
    assert listed_plans(setup.engine)["p1/job.drill"].kind is RunKind.DRILL

    # A backup, then a drill of it by a real worker child with the plan's sealed password.
    assert execute(setup, specs, "p1/job")["state"] == "succeeded"
    run = execute(setup, specs, "p1/job.drill", RunKind.DRILL)
    assert run["state"] == "succeeded", run["error"]
    with setup.engine.connect() as db:
        proven = db.execute(
            text("SELECT plan, result, rto_target_seconds FROM drills WHERE run_id = :r"),
            {"r": run["id"]},
        ).one()
    assert tuple(proven) == ("job", "passed", 600)
    assert PASSWORD.decode() not in catalog_text(setup.engine)
    # On a machine with another key, the drill fails and says why (as a backup does).
    other = Vault(setup.engine, setup.tmp / "stranger.key")
    settings = {"source": setup.block(), "repository": "main", "copies": []}
    stranger = RunEnv(setup.engine, other, "p1", "job", settings)
    failed = execute(setup, {spec.key: replace(spec, env=stranger)}, spec.key, RunKind.DRILL)
    assert failed["state"] == "failed" and "copy the key file" in failed["hint"]

    # The drill plan changes with its plan, never on its own; no plan may take its name.
    with pytest.raises(Conflict, match="drill plan of plan job"):
        update_plan(setup.engine, setup.vault, "p1", "job.drill", setup.block())
    with pytest.raises(Conflict, match="drill plan of plan job"):
        delete_plan(setup.engine, "p1", "job.drill")
    with pytest.raises(UsageError, match=r"ending in \.drill"):
        create_plan(setup.engine, setup.vault, "p1", "other.drill", setup.block())
    daily = {**drill, "schedule": "@daily"}
    update_plan(setup.engine, setup.vault, "p1", "job", setup.block(drill=daily))
    changed = _drill_row(setup)
    assert changed.id == row.id and changed.schedule == "@daily"  # its ledger stays
    specs = plans_from_catalog(setup.engine, setup.vault, setup.state)
    assert specs["p1/job.drill"].schedule.expression == "@daily"

    # Without a drill schedule, the drill plan goes (its slots and runs with it).
    update_plan(setup.engine, setup.vault, "p1", "job", setup.block(drill={"target": "latest"}))
    assert _drill_row(setup) is None
    assert set(plans_from_catalog(setup.engine, setup.vault, setup.state)) == {"p1/job"}
    with setup.engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM runs WHERE kind = 'drill'")).scalar() == 0


def test_a_drill_plan_is_deleted_with_its_plan_and_an_older_one_gets_its_row(
    setup: Setup,
) -> None:
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block(drill={"schedule": "@daily"}))
    delete_plan(setup.engine, "p1", "job")
    assert _drill_row(setup) is None and list_plans(setup.engine, "p1") == []
    # A plan made before drill plans had rows: the service writes its drill's row.
    create_plan(setup.engine, setup.vault, "p1", "job", setup.block(drill={"schedule": "@daily"}))
    with setup.engine.begin() as db:
        db.execute(text("DELETE FROM plans WHERE name = 'job.drill'"))
    spec = plans_from_catalog(setup.engine, setup.vault, setup.state)["p1/job.drill"]
    ids = drill_rows(setup.engine, [spec])
    assert ids == {"p1/job.drill": _drill_row(setup).id}
    # A file's plan holding the name keeps it: the API plan's drill is refused, named.
    create_plan(setup.engine, setup.vault, "p1", "two", setup.block())
    config = parse_config(
        f"repository: {setup.repo}\nsources:\n  two.drill:\n    type: directory\n"
        f"    paths: [{setup.tmp / 'data'}]\n    schedule: '@daily'\n    project: p1\n"
    )
    sync_plans(setup.engine, plans_from_config(config).values())
    with pytest.raises(Conflict, match=r"already has a plan 'two\.drill'"):
        update_plan(
            setup.engine, setup.vault, "p1", "two", setup.block(drill={"schedule": "@daily"})
        )
    assert _drill_row(setup, "two.drill").origin == "file"
