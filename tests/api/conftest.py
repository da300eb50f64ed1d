"""The API on a real uvicorn (127.0.0.1, a free port) over a real catalog and queue in the
private cluster, with tokens of every role in two projects."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from procrastinate import App, PsycopgConnector
from sqlalchemy import Engine, text

from safehold.api.app import create_app
from safehold.api.auth import FailureLimiter
from safehold.api.server import ApiOptions, bind, serve_api
from safehold.api.tokens import create_token
from safehold.config import load_config
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.jobs import Jobs, register
from safehold.service.plans import PlanSpec, plans_from_config, sync_plans
from safehold.service.vault import Vault
from tests.servers.private_cluster import fresh_database, make_state_dir, private_cluster

__all__ = ["Api", "api", "make_state_dir", "private_cluster"]

ROLES = ("admin", "operator", "viewer", "agent")
PROJECTS = ("default", "beta")
SNAPSHOT = "ab" * 32


@dataclass
class Api:
    """A running API: its address, its catalog, and a token per project and role."""

    url: str
    engine: Engine
    conninfo: str
    specs: dict[str, PlanSpec]
    tokens: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    done_run: uuid.UUID = field(default_factory=uuid.uuid4)
    folder: Path = field(default_factory=Path)

    def client(self, project: str | None = "default", role: str = "admin") -> httpx.Client:
        headers = {}
        if project is not None:
            headers["Authorization"] = f"Bearer {self.tokens[project, role]}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def queued_run(self, plan: str = "default/job") -> uuid.UUID:
        """A queued run (no job: cancelling it needs none)."""
        return insert_run(self.engine, plan, state="queued")


def insert_run(engine: Engine, plan: str, *, state: str, snapshot: str | None = None) -> uuid.UUID:
    run_id = uuid.uuid4()
    project, name = plan.split("/")
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, snapshot_id) "
                "SELECT :id, id, 'backup', 'manual', :state, :snap FROM plans "
                "WHERE project = :p AND name = :n"
            ),
            {"id": run_id, "state": state, "snap": snapshot, "p": project, "n": name},
        )
    return run_id


def write_config(folder: Path) -> Path:
    (folder / "data").mkdir(exist_ok=True)
    path = folder / "safehold.yaml"
    path.write_text(
        f"repository: {{location: {folder / 'repo'}, password_env: SH_TEST_PW}}\n"
        "sources:\n"
        + "".join(
            f"  {name}:\n    type: directory\n    paths: [{folder / 'data'}]\n"
            f'    schedule: "@daily"\n    project: {project}\n'
            for name, project in (("job", "default"), ("second", "default"), ("other", "beta"))
        )
    )
    return path


@pytest.fixture(scope="module")
def api(
    private_cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Api]:
    name = "api_" + request.module.__name__.rsplit(".", 1)[-1][:40].lower()
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    folder = tmp_path_factory.mktemp("api")
    specs = plans_from_config(load_config(str(write_config(folder))))
    sync_plans(engine, specs.values())
    sock = bind("127.0.0.1:0")
    port = sock.getsockname()[1]
    conninfo = private_cluster.conninfo(name)
    started = threading.Event()
    loop_box: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    failure: list[BaseException] = []

    async def main() -> None:
        app = App(connector=PsycopgConnector(conninfo=conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, engine, plans=lambda: specs, state_dir=folder, worker="api-test")
            # A high limit: the tests' bad tokens all come from 127.0.0.1 (the limit's own
            # test has an app of its own).
            web = create_app(engine, plans=lambda: specs, jobs=jobs,
                             limiter=FailureLimiter(limit=10_000),
                             vault=Vault(engine, folder / "service.key"))  # fmt: skip
            stop = asyncio.Event()
            loop_box.append((asyncio.get_running_loop(), stop))
            started.set()
            await serve_api(web, sock, stop, ApiOptions())

    def thread() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
            started.set()

    runner = threading.Thread(target=thread, name="api", daemon=True)
    runner.start()
    started.wait(30)
    assert not failure, failure
    found = Api(f"http://127.0.0.1:{port}", engine, conninfo, specs, folder=folder)
    for project in PROJECTS:
        for role in ROLES:
            found.tokens[project, role] = create_token(
                engine, project=project, role=role, name=f"{project}-{role}"
            ).token
    found.done_run = insert_run(engine, "default/job", state="succeeded", snapshot=SNAPSHOT)
    insert_run(engine, "beta/other", state="failed")
    with engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO run_lines (run_id, seq, at, level, message) "
                "VALUES (:r, 0, now(), 'info', 'run.started')"
            ),
            {"r": found.done_run},
        )
        db.execute(
            text(
                "INSERT INTO slots (plan_id, slot_at, state) SELECT id, now(), 'succeeded' "
                "FROM plans WHERE project = 'default' AND name = 'job'"
            )
        )
    try:
        yield found
    finally:
        loop, stop = loop_box[0]
        loop.call_soon_threadsafe(stop.set)
        runner.join(30)
        sock.close()
        engine.dispose()
