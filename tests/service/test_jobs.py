"""A run from claim to end, with a real child backup, a real catalog and queue."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from procrastinate import App, PsycopgConnector
from sqlalchemy import Engine, text

from safehold.catalog import RunKind, RunTrigger
from safehold.config import load_config
from safehold.runs import child
from safehold.runs.child import LogLine, run_child
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.jobs import RUN_TASK, Jobs, register
from safehold.service.limits import write_slots
from safehold.service.plans import PlanSpec, plans_from_config, sync_plans
from tests.conftest import PASSWORD, CliRunner
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]


@dataclass
class Setup:
    engine: Engine
    conninfo: str
    tmp: Path
    repo: str

    def config(self, block: str) -> dict[str, PlanSpec]:
        path = self.tmp / "safehold.yaml"
        path.write_text(
            f"repository: {{location: {self.repo}, password_env: SH_TEST_PW}}\n"
            f"sources:\n  job:\n    type: directory\n    paths: [{self.tmp / 'data'}]\n"
            '    schedule: "@daily"\n' + "".join(f"    {line}\n" for line in block.splitlines())
        )
        specs = plans_from_config(load_config(str(path)))
        sync_plans(self.engine, specs.values())
        return specs


@pytest.fixture
def setup(
    private_cluster: Cluster,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cli_repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    name = "jobs_" + request.node.name[:40].lower()
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    monkeypatch.setenv("SH_TEST_PW", PASSWORD.decode())
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file").write_text("some data\n")
    try:
        yield Setup(engine, private_cluster.conninfo(name), tmp_path, cli_repo)
    finally:
        engine.dispose()


def run_once(
    setup: Setup, specs: dict[str, PlanSpec], *, trigger: RunTrigger = RunTrigger.MANUAL
) -> tuple[uuid.UUID, dict[str, Any]]:
    async def go() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(
                app, setup.engine, plans=lambda: specs, state_dir=setup.tmp / "state", worker="w1"
            )
            run_id = await asyncio.to_thread(jobs.new_run, "default/job", trigger=trigger)
            await jobs.execute(run_id)
            return run_id

    run_id = asyncio.run(go())
    return run_id, row(setup.engine, run_id)


def row(engine: Engine, run_id: uuid.UUID) -> dict[str, Any]:
    with engine.connect() as db:
        found = db.execute(text("SELECT * FROM runs WHERE id = :r"), {"r": run_id}).one()
    return dict(found._mapping)


def test_a_run_backs_up_and_records_everything(setup: Setup, cli: CliRunner) -> None:
    specs = setup.config("")
    run_id, run = run_once(setup, specs)
    assert run["state"] == "succeeded" and run["worker"] == "w1"
    assert run["started_at"] <= run["ended_at"] and run["bytes_added"] > 0
    # The repository's size after the backup, as the child's summary gave it: its packs.
    packs = [f for f in (Path(setup.repo) / "data").rglob("*") if f.is_file()]
    assert packs and run["repository_bytes"] == sum(f.stat().st_size for f in packs)
    snaps = cli("-r", setup.repo, "snapshots", "--json")
    assert run["snapshot_id"] in snaps.stdout
    with setup.engine.connect() as db:
        lines = (
            db.execute(
                text("SELECT message FROM run_lines WHERE run_id = :r ORDER BY seq"), {"r": run_id}
            )
            .scalars()
            .all()
        )
    assert lines[0].startswith("run.started") and lines[-1].startswith("run.finished")
    assert PASSWORD.decode() not in " ".join(lines)

    # A second job for the same run (re-queued after a crash) finds nothing to do.
    async def again() -> None:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        async with app.open_async():
            jobs = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w2")
            await jobs.execute(run_id)

    asyncio.run(again())
    assert row(setup.engine, run_id)["worker"] == "w1"


def test_a_failed_run_is_retried_after_its_delay(setup: Setup) -> None:
    hook = setup.tmp / "lock.sh"
    hook.write_text("#!/bin/sh\necho 'cannot lock the service' >&2\nexit 3\n")
    hook.chmod(0o755)
    specs = setup.config(f"retries: 1\nretry_delay: 90s\nhooks: {{pre-backup-lock: {hook}}}")
    run_id, run = run_once(setup, specs)
    assert run["state"] == "failed" and "pre-backup-lock" in run["error"]
    # The next step is recorded apart from the error, so the dashboard shows it as one.
    assert run["hint"] == "its full output is in the run record"
    assert "hint:" not in run["error"] and "cannot lock the service" in run["error"]
    with setup.engine.connect() as db:
        retry = db.execute(
            text("SELECT id, attempt, trigger, state, job_id FROM runs WHERE id <> :r"),
            {"r": run_id},
        ).one()
        scheduled = db.execute(
            text(
                "SELECT scheduled_at - now(), lock, task_name FROM procrastinate_jobs WHERE id = :j"
            ),
            {"j": retry.job_id},
        ).one()
    assert (retry.attempt, retry.trigger, retry.state) == (2, "retry", "queued")
    assert 60 < scheduled[0].total_seconds() <= 90
    assert scheduled[1:] == ("default/job", RUN_TASK)


def test_a_run_the_check_hook_declines_is_skipped(setup: Setup) -> None:
    specs = setup.config("hooks: {pre-backup-check: 'sh -c \"echo replica lagging; exit 1\"'}")
    _, run = run_once(setup, specs)
    assert run["state"] == "skipped" and run["snapshot_id"] is None


def test_a_run_past_its_timeout_is_timed_out(setup: Setup) -> None:
    specs = setup.config("timeout: 1s\nhooks: {backup: 'sleep 30'}")
    started = time.monotonic()
    _, run = run_once(setup, specs)
    assert run["state"] == "timed_out"
    assert time.monotonic() - started < 25


# A run started in the background inherits SIGINT ignored, and so would the child: it must
# not depend on an earlier test in the same worker having reset it (asyncio's
# remove_signal_handler does).
@pytest.mark.usefixtures("sigint_default")
def test_the_parent_stops_a_child_that_does_not_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its limit a child gets Ctrl-C (SIGINT: a safehold child stops its hooks and
    runs the unlock hooks), and SIGKILL of its group if it still runs TERM_WAIT later."""
    lines: list[LogLine] = []
    argv = [
        sys.executable,
        "-c",
        "import sys, time\n"
        'print(\'{"level": "info", "event": "x"}\', file=sys.stderr, flush=True)\n'
        "time.sleep(60)\n",
    ]
    started = time.monotonic()
    result = asyncio.run(run_child(argv, on_line=lines.append, limit=1.0))
    assert result.killed and result.record is None
    assert time.monotonic() - started < 15
    assert lines[0].message == "x"
    assert lines[-1].message == "KeyboardInterrupt"  # it was asked, and ended by itself
    # A child that ignores Ctrl-C is killed with its group after TERM_WAIT.
    monkeypatch.setattr(child, "TERM_WAIT", 1.0)
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n",
    ]
    started = time.monotonic()
    result = asyncio.run(run_child(stubborn, on_line=lines.append, limit=1.0))
    assert result.killed and result.exit_code == -signal.SIGKILL
    assert time.monotonic() - started < 15


def _stale_heartbeats(engine: Engine) -> None:
    """Every queue worker's heartbeat an hour old: what the reaper sees of a lost one."""
    with engine.begin() as db:
        db.execute(
            text("UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'")
        )


@pytest.mark.parametrize(
    ("plan", "kind", "retried"),
    [
        ("default/job", "backup", True),
        ("default/job", "retention", False),
        ("prune", "prune", True),
    ],
)
def test_a_lost_worker_s_run_is_ended_and_retried(
    setup: Setup, plan: str, kind: str, retried: bool
) -> None:
    """A lost run is retried as what it was (a retention is not: the next backup queues
    another)."""
    setup.config("")
    path = setup.tmp / "safehold.yaml"
    path.write_text(
        path.read_text().replace("SH_TEST_PW}", "SH_TEST_PW, prune: {schedule: '@weekly'}}")
    )
    specs = plans_from_config(load_config(str(path)))
    sync_plans(setup.engine, specs.values())
    key = f"_repository/{setup.repo}" if plan == "prune" else plan

    async def go() -> tuple[uuid.UUID, int]:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w1")
            run_id = await asyncio.to_thread(
                jobs.new_run, key, trigger=RunTrigger.MANUAL, kind=RunKind(kind)
            )
            await jobs.defer(run_id, key)
            # A worker takes the job: its heartbeat stops...
            worker_id = await app.job_manager.register_worker()
            job = await app.job_manager.fetch_job(queues=None, worker_id=worker_id)
            assert job is not None
            # ...another process ("w0") claimed the run, and dies.
            dead = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w0")
            await asyncio.to_thread(dead.claim, run_id)
            _stale_heartbeats(setup.engine)
            return run_id, await jobs.reap()

    run_id, reaped = asyncio.run(go())
    assert reaped == 1
    lost = row(setup.engine, run_id)
    assert lost["state"] == "worker_lost" and "worker" in lost["error"]
    with setup.engine.connect() as db:
        retries = db.execute(
            text("SELECT attempt, trigger, state, kind FROM runs WHERE id <> :r"), {"r": run_id}
        ).all()
        statuses = (
            db.execute(text("SELECT status FROM procrastinate_jobs ORDER BY id")).scalars().all()
        )
    if not retried:
        assert retries == [] and statuses == ["failed"]
        return
    assert [tuple(r) for r in retries] == [(2, "retry", "queued", kind)]
    assert statuses == ["failed", "todo"]  # the stalled job ended; its plan's lock is free


def test_a_successful_backup_queues_the_plan_s_retention(setup: Setup, cli: CliRunner) -> None:
    specs = setup.config("retention: {keep_last: 1}")
    run_once(setup, specs)
    (setup.tmp / "data" / "file").write_text("changed\n")
    run_once(setup, specs)
    with setup.engine.connect() as db:
        retention = (
            db.execute(text("SELECT id FROM runs WHERE kind = 'retention' AND state = 'queued'"))
            .scalars()
            .all()
        )
    assert len(retention) == 2  # one after each backup

    async def run_retention() -> None:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w")
            await jobs.execute(retention[-1])

    asyncio.run(run_retention())
    done = row(setup.engine, retention[-1])
    assert done["state"] == "succeeded" and done["repository_bytes"] is None  # backups' only
    snaps = cli("-r", setup.repo, "snapshots", "--json")
    assert len(json.loads(snaps.stdout)) == 1  # keep_last 1


@pytest.mark.parametrize("where", ["repository", "destination"])
def test_max_concurrent_jobs_limits_runs_on_one_place(setup: Setup, where: str) -> None:
    """Three plans writing to one repository, or one destination, with max_concurrent_jobs
    1 there: their runs, started at once, run one after the other."""
    hook = setup.tmp / "slow.sh"
    trace = setup.tmp / "trace"
    hook.write_text(f"#!/bin/sh\necho start >> {trace}\nsleep 1\necho end >> {trace}\n")
    hook.chmod(0o755)
    path = setup.tmp / "safehold.yaml"
    plans = "".join(
        f"  p{i}: {{type: directory, paths: [{setup.tmp / 'data'}], schedule: '@daily', "
        f"hooks: {{backup: {hook}}}}}\n"
        for i in range(3)
    )
    limit = ", max_concurrent_jobs: 1"
    path.write_text(
        f"repository: {{location: {setup.repo}, password_env: SH_TEST_PW"
        f"{limit if where == 'repository' else ''}}}\n"
        f"destinations: [{{location: {setup.tmp / 'plain'}, format: archive, name: plain"
        f"{limit if where == 'destination' else ''}}}]\n"
        f"sources:\n{plans}"
    )
    specs = plans_from_config(load_config(str(path)))
    place = setup.repo if where == "repository" else str(setup.tmp / "plain")
    assert specs["default/p0"].limits == ((place, 1),)
    sync_plans(setup.engine, specs.values())

    async def go() -> None:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        async with app.open_async():
            jobs = Jobs(
                app, setup.engine, plans=lambda: specs, state_dir=setup.tmp / "state",
                worker="w", conninfo=setup.conninfo,
            )  # fmt: skip
            ids = [
                await asyncio.to_thread(jobs.new_run, key, trigger=RunTrigger.MANUAL)
                for key in specs
            ]
            await asyncio.gather(*(jobs.execute(run_id) for run_id in ids))

    asyncio.run(go())
    with setup.engine.connect() as db:
        spans = db.execute(
            text("SELECT state, started_at, ended_at FROM runs ORDER BY started_at")
        ).all()
    assert [s.state for s in spans] == ["succeeded"] * 3
    # The backup hooks ran one at a time: each ended before the next started.
    assert trace.read_text().split() == ["start", "end"] * 3


def test_limits_on_several_places_never_deadlock(setup: Setup, tmp_path: Path) -> None:
    """Two runs each writing to the same two limited places, listed in opposite orders:
    both finish, one after the other (taking the first place each and then waiting for the
    other's would hang both for ever)."""
    path = tmp_path / "safehold.yaml"
    path.write_text(
        "repository: {location: /r, password: p, max_concurrent_jobs: 1}\n"
        "destinations: [{location: /d1, password: p, max_concurrent_jobs: 1},"
        " {location: /d2, password: p}]\n"
        "sources: {a: {type: directory, paths: [/], schedule: '@daily'}}\n"
    )
    limits = plans_from_config(load_config(str(path)))["default/a"].limits
    assert limits == (("/r", 1), ("/d1", 1))
    spans: list[tuple[str, float, float]] = []

    async def run(name: str, order: tuple[tuple[str, int], ...]) -> None:
        async with write_slots(setup.conninfo, order, what=name):
            start = time.monotonic()
            await asyncio.sleep(0.3)
            spans.append((name, start, time.monotonic()))

    async def both() -> None:
        await asyncio.wait_for(
            asyncio.gather(run("a", limits), run("b", tuple(reversed(limits)))), timeout=20
        )

    asyncio.run(both())
    (_, _, first_end), (_, second_start, _) = sorted(spans, key=lambda span: span[1])
    assert first_end <= second_start


def test_a_destination_cannot_carry_a_prune(tmp_path: Path) -> None:
    path = tmp_path / "safehold.yaml"
    path.write_text("destinations: [{location: /x, password: y, prune: {schedule: '@daily'}}]\n")
    with pytest.raises(Exception, match="belongs in the repository"):
        load_config(str(path))


def test_a_repository_s_prune_is_a_plan_of_its_own(setup: Setup) -> None:
    setup.config("")
    path = setup.tmp / "safehold.yaml"
    text_ = path.read_text().replace(
        "password_env: SH_TEST_PW}", "password_env: SH_TEST_PW, prune: {schedule: '@weekly', "
        "max_unused: 5%}}",
    )  # fmt: skip
    path.write_text(text_)
    specs = plans_from_config(load_config(str(path)))
    prune = specs[f"_repository/{setup.repo}"]
    assert prune.kind == "prune" and prune.max_unused == "5%"
    assert prune.lock == f"repository:{setup.repo}" and specs["default/job"].lock == "default/job"
    assert (prune.timeout, prune.retries) == (None, 0)
    with pytest.raises(Exception, match="not between"):
        path.write_text(text_.replace("5%", "150%"))
        load_config(str(path))


def test_a_prune_past_its_timeout_is_stopped_and_retried(setup: Setup) -> None:
    """``prune: {timeout, retries}`` mean what they mean for a source: a prune still
    going at its time-out is stopped, recorded as timed out, and tried again."""
    setup.config("")
    path = setup.tmp / "safehold.yaml"
    path.write_text(
        path.read_text().replace(
            "password_env: SH_TEST_PW}",
            "password_env: SH_TEST_PW, prune: {schedule: '@weekly', timeout: 50ms, "
            "retries: 1, retry_delay: 1h}}",
        )
    )
    specs = plans_from_config(load_config(str(path)))
    key = f"_repository/{setup.repo}"
    assert (specs[key].timeout, specs[key].retries, specs[key].retry_delay) == (0.05, 1, 3600)
    sync_plans(setup.engine, specs.values())

    async def go() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(
                app, setup.engine, plans=lambda: specs, state_dir=setup.tmp / "state",
                worker="w", conninfo=setup.conninfo,
            )  # fmt: skip
            run_id = await asyncio.to_thread(
                jobs.new_run, key, trigger=RunTrigger.MANUAL, kind=RunKind.PRUNE
            )
            await jobs.execute(run_id)
            return run_id

    run_id = asyncio.run(go())
    done = row(setup.engine, run_id)
    assert (done["state"], done["kind"]) == ("timed_out", "prune")
    with setup.engine.connect() as db:
        retry = db.execute(
            text("SELECT trigger, attempt, state FROM runs WHERE id <> :r"), {"r": run_id}
        ).one()
    assert tuple(retry) == ("retry", 2, "queued")


def test_a_prune_job_succeeds_and_never_blocks_a_backup(setup: Setup, cli: CliRunner) -> None:
    path = setup.tmp / "safehold.yaml"
    setup.config("")
    path.write_text(
        path.read_text().replace(
            "password_env: SH_TEST_PW}",
            "password_env: SH_TEST_PW, max_concurrent_jobs: 1, prune: {schedule: '@weekly'}}",
        )
    )
    specs = plans_from_config(load_config(str(path)))
    sync_plans(setup.engine, specs.values())
    prune_key = f"_repository/{setup.repo}"

    async def go() -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(
                app, setup.engine, plans=lambda: specs, state_dir=setup.tmp / "state",
                worker="w", conninfo=setup.conninfo,
            )  # fmt: skip

            async def queue(key: str) -> uuid.UUID:
                run_id = await asyncio.to_thread(
                    jobs.new_run, key, trigger=RunTrigger.MANUAL, kind=specs[key].kind
                )
                await jobs.defer(run_id, key)
                return run_id

            worker = await app.job_manager.register_worker()
            # A worker holds the prune's job (``doing``: its lock is taken)...
            prune = await queue(prune_key)
            held = await app.job_manager.fetch_job(queues=None, worker_id=worker)
            assert held is not None and held.lock == f"repository:{setup.repo}"
            # ...a second prune of the repository waits behind it...
            second = await queue(prune_key)
            # ...and a backup of a plan on the same repository is taken and runs.
            backup = await queue("default/job")
            got = await app.job_manager.fetch_job(queues=None, worker_id=worker)
            assert got is not None and got.task_kwargs["run_id"] == str(backup)
            assert await app.job_manager.fetch_job(queues=None, worker_id=worker) is None
            # The backup runs to its end while the prune's job is still held.
            await jobs.execute(backup)
            await jobs.execute(prune)
            return prune, second, backup

    prune, second, backup = asyncio.run(go())
    assert row(setup.engine, backup)["state"] == "succeeded"
    done = row(setup.engine, prune)
    assert (done["state"], done["kind"]) == ("succeeded", "prune")
    assert row(setup.engine, second)["state"] == "queued"


async def _fetched_by_a_worker(
    app: App, setup: Setup, specs: dict[str, PlanSpec]
) -> tuple[Jobs, uuid.UUID]:
    """A manual run of default/job, queued and its job taken by a registered worker: what
    a worker has in hand just before its execute claims the run. Jobs of process "w1"."""
    jobs = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w1")
    run_id = await asyncio.to_thread(jobs.new_run, "default/job", trigger=RunTrigger.MANUAL)
    await jobs.defer(run_id, "default/job")
    worker_id = await app.job_manager.register_worker()
    assert await app.job_manager.fetch_job(queues=None, worker_id=worker_id) is not None
    return jobs, run_id


def test_a_process_never_reaps_the_runs_it_runs_itself(setup: Setup, tmp_path: Path) -> None:
    """After a database outage the queue's heartbeat of a live worker is late; its own
    process must not end its runs as lost (another process would run them twice)."""
    hook = tmp_path / "slow.sh"
    hook.write_text("#!/bin/sh\nsleep 3\n")
    hook.chmod(0o755)
    specs = setup.config(f"hooks: {{backup: {hook}}}")

    async def go() -> tuple[int, uuid.UUID]:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs, run_id = await _fetched_by_a_worker(app, setup, specs)
            running = asyncio.create_task(jobs.execute(run_id))
            while row(setup.engine, run_id)["state"] != "running":
                await asyncio.sleep(0.05)
            await asyncio.to_thread(_stale_heartbeats, setup.engine)
            reaped = await jobs.reap()
            await running
            return reaped, run_id

    reaped, run_id = asyncio.run(go())
    assert reaped == 0
    assert row(setup.engine, run_id)["state"] == "succeeded"  # ended by its own execute


def test_a_run_this_process_claimed_but_runs_no_more_is_reaped(setup: Setup) -> None:
    """A run marked running by this process with no execute of it left here (one that died
    after its claim) is lost like any other, not held for ever as "still mine"."""
    specs = setup.config("")

    async def go() -> int:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs, run_id = await _fetched_by_a_worker(app, setup, specs)
            await asyncio.to_thread(jobs.claim, run_id)
            await asyncio.to_thread(_stale_heartbeats, setup.engine)
            return await jobs.reap()

    assert asyncio.run(go()) == 1
    with setup.engine.connect() as db:
        states = db.execute(text("SELECT state FROM runs ORDER BY attempt")).scalars().all()
    assert states == ["worker_lost", "queued"]  # and retried


def test_a_claim_tried_again_after_its_answer_was_lost_takes_the_run(setup: Setup) -> None:
    """The database stopped between a claim's commit and its answer: the claim tried again
    takes the run it already took (else the run stays running, run by nobody); an agent's
    claim never takes a running run."""
    specs = setup.config("")
    jobs = Jobs(
        App(connector=PsycopgConnector(conninfo=setup.conninfo)),
        setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w1",
    )  # fmt: skip
    run_id = jobs.new_run("default/job", trigger=RunTrigger.MANUAL)
    first = jobs.claim(run_id)
    started = row(setup.engine, run_id)["started_at"]
    assert first is not None and jobs.claim(run_id) == first
    assert row(setup.engine, run_id)["started_at"] == started
    assert jobs.claim(run_id, "agent:a1") is None
    other = Jobs(jobs.app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w2")
    assert other.claim(run_id) is None
    assert row(setup.engine, run_id)["worker"] == "w1"


def test_a_run_whose_execute_breaks_is_ended_as_failed(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error of the service itself between claim and end (not the child's) ends the run
    as failed, naming it, instead of leaving it running; the job fails with the error."""
    specs = setup.config("")

    async def broken(*args: Any) -> list[str]:
        raise RuntimeError("no such thing\n[SQL: UPDATE runs ...]\n[parameters: {'secret': 1}]")

    async def go() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w1")
            monkeypatch.setattr(jobs, "_argv", broken)
            run_id = await asyncio.to_thread(jobs.new_run, "default/job", trigger=RunTrigger.MANUAL)
            with pytest.raises(RuntimeError, match="no such thing"):
                await jobs.execute(run_id)
            return run_id

    ended = row(setup.engine, asyncio.run(go()))
    assert ended["state"] == "failed" and ended["ended_at"] is not None
    assert "service failed" in ended["error"] and "no such thing" in ended["error"]
    assert "secret" not in ended["error"] and "SQL" not in ended["error"]  # first line only


def test_a_run_cancelled_with_its_task_is_ended_as_stopped(setup: Setup, tmp_path: Path) -> None:
    """The service stopping harder than its grace cancels the job's task: the child goes
    with it and the run is ended as failed ("the service stopped"), not left running."""
    hook = tmp_path / "slow.sh"
    hook.write_text("#!/bin/sh\nsleep 30\n")
    hook.chmod(0o755)
    specs = setup.config(f"hooks: {{backup: {hook}}}")

    async def go() -> uuid.UUID:
        app = App(connector=PsycopgConnector(conninfo=setup.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(app, setup.engine, plans=lambda: specs, state_dir=setup.tmp, worker="w1")
            run_id = await asyncio.to_thread(jobs.new_run, "default/job", trigger=RunTrigger.MANUAL)
            task = asyncio.create_task(jobs.execute(run_id))
            while not jobs._children:
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert run_id not in jobs._executing
            return run_id

    ended = row(setup.engine, asyncio.run(go()))
    assert ended["state"] == "failed" and "the service stopped" in ended["error"]
