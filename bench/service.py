"""The service's own figures: tick time, jobs per second, overhead on a small backup.

Run from the repository root with the project's environment (it imports safehold)::

    .venv/bin/python bench/service.py [--plans 10000] [--workers 4] [--jobs 2000]

It starts a private PostgreSQL cluster in a temporary state folder (the machine's
``postgresql`` package, as ``safehold serve`` does) and measures:

1. **tick** over ``--plans`` plans: registering them, the first tick (every plan's next
   slot searched), a steady tick every second of schedule time with the plans spread over
   the hour (``H * * * *``: a few due a tick), and the tick where every plan is due at
   once (``@hourly``: as many ledger rows and runs as plans);
2. **jobs per second**: ``--jobs`` trivial procrastinate jobs run by one worker with
   ``--workers`` concurrent jobs (the queue's own cost, no child process);
3. **overhead on a small backup**: the same 10-file folder backed up by hand
   (``safehold backup --config F --source S``, wall time) and as a plan's manual run under
   ``safehold serve`` (queued to ended, from the catalog); the difference is what the
   service adds;
4. **restore points**: a page of 50 with ``--points`` of them in the catalog (a plan's
   newest, a plan's page far back through the cursor, a project's, a small project's).

Figures go to standard output as a Markdown table (docs/benchmarks.md, "The service").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from harness import ROOT, latencies, print_table, scratch  # bench/harness.py
from sqlalchemy import Engine, text

T0 = datetime(2026, 12, 7, 0, 0, 30, tzinfo=UTC)


def _specs(count: int, schedule: str) -> dict[str, object]:
    from safehold.policy.schedule import parse_schedule
    from safehold.service.plans import PlanSpec

    out: dict[str, object] = {}
    for i in range(count):
        key = f"bench/p{i:05d}"
        out[key] = PlanSpec(
            project="bench",
            name=f"p{i:05d}",
            config_path="/nonexistent",
            schedule=parse_schedule(schedule, key=key),
        )
    return out


def _reset(engine: Engine) -> None:
    with engine.begin() as db:
        db.execute(text("TRUNCATE plans, slots, runs, run_lines, restore_points CASCADE"))


def bench_tick(engine: Engine, plans: int) -> list[tuple[str, str]]:
    """Tick figures for ``plans`` plans, as (what, figure) rows."""
    from safehold.service.plans import sync_plans
    from safehold.service.tick import TickState, tick

    rows: list[tuple[str, str]] = []
    _reset(engine)
    specs = _specs(plans, "H * * * *")
    started = time.perf_counter()
    ids = sync_plans(engine, specs.values())  # type: ignore[arg-type]
    rows.append((f"register {plans:,} plans (once per start or reload)",
                 f"{time.perf_counter() - started:.2f} s"))  # fmt: skip
    with engine.begin() as db:
        db.execute(text("UPDATE plans SET created_at = :t"), {"t": T0})
    state = TickState()
    started = time.perf_counter()
    tick(engine, specs, ids, T0, state)  # type: ignore[arg-type]
    rows.append(("first tick: every plan's next slot searched",
                 f"{time.perf_counter() - started:.3f} s"))  # fmt: skip
    times, due = [], 0
    for second in range(1, 301):
        started = time.perf_counter()
        result = tick(engine, specs, ids, T0 + timedelta(seconds=second), state)  # type: ignore[arg-type]
        times.append(time.perf_counter() - started)
        due += result.slots
    times.sort()
    rows.append((
        f"steady tick, plans spread over the hour ({due / 300:.1f} slots a tick): median / p99",
        f"{statistics.median(times) * 1000:.1f} / {times[int(len(times) * 0.99)] * 1000:.1f} ms",
    ))  # fmt: skip
    _reset(engine)
    specs = _specs(plans, "@hourly")
    ids = sync_plans(engine, specs.values())  # type: ignore[arg-type]
    with engine.begin() as db:
        db.execute(text("UPDATE plans SET created_at = :t"), {"t": T0})
    state = TickState()
    tick(engine, specs, ids, T0, state)  # type: ignore[arg-type]
    started = time.perf_counter()
    result = tick(engine, specs, ids, T0 + timedelta(hours=1), state)  # type: ignore[arg-type]
    rows.append((
        f"every plan due at once (@hourly): {result.slots:,} slots and "
        f"{len(result.new_runs):,} runs written",
        f"{time.perf_counter() - started:.3f} s",
    ))  # fmt: skip
    _reset(engine)
    return rows


def bench_points(engine: Engine, count: int, reps: int = 300) -> list[tuple[str, str]]:
    """Listing restore points, a page of 50, with ``count`` of them in the catalog: 100
    plans of project ``bench`` share them; a small project ``tiny`` has 10."""
    import random

    from safehold.service.restore_points import list_points

    _reset(engine)
    per_plan = max(1, count // 100)
    started = time.perf_counter()
    with engine.begin() as db:
        db.execute(text(
            "INSERT INTO plans (project, name, origin, schedule) "
            "SELECT 'bench', 'p' || i, 'api', '@daily' FROM generate_series(0, 99) i "
            "UNION ALL SELECT 'tiny', 'only', 'api', '@daily'"
        ))  # fmt: skip
        db.execute(
            text(
                "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at, chain_id, "
                "  chain_seq) "
                "SELECT p.id, p.project, md5(p.id || '-' || i) || md5(i || '-' || p.id), "
                "  timestamptz '2020-01-01' + i * interval '1 hour', md5(p.id || '/' || i / 10),"
                "  i % 10 "
                "FROM plans p, generate_series(1, "
                "  CASE WHEN p.project = 'tiny' THEN 10 ELSE :n END) i"
            ),
            {"n": per_plan},
        )
        db.execute(text("ANALYZE restore_points"))
    total = per_plan * 100 + 10
    rows = [(f"write {total:,} restore points (setup)", f"{time.perf_counter() - started:.1f} s")]
    plans = [f"bench/p{i}" for i in range(100)]
    deep = {}
    for plan in plans[:20]:
        page = list_points(engine, plan=plan, limit=500)
        for _ in range(9):  # the cursor after 5,000 points
            assert page.next_cursor is not None
            page = list_points(engine, plan=plan, limit=500, cursor=page.next_cursor)
        deep[plan] = page.next_cursor
    cases = [
        ("a plan's newest page", lambda: list_points(engine, plan=random.choice(plans))),
        ("a plan's page 5,000 points back (cursor)",
         lambda: list_points(engine, plan=(p := random.choice(plans[:20])), cursor=deep[p])),
        ("a project's newest page (all of them in it)",
         lambda: list_points(engine, projects=["bench"])),
        ("a small project's page beside them", lambda: list_points(engine, projects=["tiny"])),
    ]  # fmt: skip
    for what, call in cases:
        median, p99 = latencies(call, reps)
        rows.append((f"{what}, 50 a page: median / p99", f"{median:.1f} / {p99:.1f} ms"))
    _reset(engine)
    return rows


def bench_jobs(conninfo: str, jobs: int, workers: int) -> list[tuple[str, str]]:
    """Trivial jobs through procrastinate: deferred, then run by one worker."""
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=conninfo))

    @app.task(name="bench.noop", queue="bench")
    async def noop(i: int) -> None:
        return None

    async def go() -> tuple[float, float]:
        async with app.open_async():
            started = time.perf_counter()
            await noop.batch_defer_async(*({"i": i} for i in range(jobs)))
            deferred = time.perf_counter() - started
            started = time.perf_counter()
            await app.run_worker_async(
                queues=["bench"], concurrency=workers, wait=False,
                install_signal_handlers=False, delete_jobs="always",
            )  # fmt: skip
            return deferred, time.perf_counter() - started

    deferred, ran = asyncio.run(go())
    return [
        (f"defer {jobs:,} jobs (one batch)", f"{jobs / deferred:,.0f} jobs/s"),
        (f"run {jobs:,} trivial jobs, one worker, {workers} at once", f"{jobs / ran:,.0f} jobs/s"),
    ]


def bench_overhead(work: Path, state_dir: Path, reps: int) -> list[tuple[str, str]]:
    """A 10-file backup by hand and as a plan's manual run under serve."""
    data = work / "data"
    data.mkdir()
    for i in range(10):
        (data / f"f{i}").write_bytes(os.urandom(4096))
    env = {**os.environ, "BENCH_PW": "bench", "SAFEHOLD_CACHE_DIR": str(work / "cache")}
    safehold = [sys.executable, "-m", "safehold"]
    repo = work / "repo"
    subprocess.run([*safehold, "-r", str(repo), "--password-command", "echo bench", "init"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    config = work / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {repo}, password_env: BENCH_PW}}\n"
        f"service: {{state_dir: {state_dir}}}\n"
        f'sources:\n  small: {{type: directory, paths: [{data}], schedule: "@yearly"}}\n'
    )
    manual = []
    for _ in range(reps):
        subprocess.run(["sync"], check=True)
        started = time.perf_counter()
        subprocess.run([*safehold, "backup", "--config", str(config), "--source", "small"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        manual.append(time.perf_counter() - started)
    serve = subprocess.Popen(
        [*safehold, "serve", "--config", str(config), "--workers", "1", "--no-api"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        service = []
        for _ in range(reps):
            subprocess.run(["sync"], check=True)
            queued = subprocess.run(
                [*safehold, "--json", "plan", "run", "small", "--config", str(config)],
                env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            run_id = queued.stdout.split('"run_id": "')[1].split('"')[0]
            service.append(_wait_run(state_dir, run_id))
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
    m, s = statistics.median(manual), statistics.median(service)
    return [
        (f"small backup by hand (`backup --config`), median of {reps}", f"{m:.2f} s"),
        (f"the same as a plan's run under serve, queued to ended, median of {reps}", f"{s:.2f} s"),
        ("overhead the service adds", f"{s - m:+.2f} s"),
    ]


def _wait_run(state_dir: Path, run_id: str) -> float:
    import psycopg

    conninfo = f"host='{state_dir}/postgresql/run' port=5432 user=safehold dbname=safehold"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with psycopg.connect(conninfo) as conn:
            row = conn.execute(
                "SELECT state, extract(epoch FROM ended_at - queued_at) FROM runs WHERE id = %s",
                (run_id,),
            ).fetchone()
        if row is not None and row[0] not in ("queued", "running"):
            assert row[0] == "succeeded", row
            return float(row[1])
        time.sleep(0.05)
    raise TimeoutError(run_id)


def main() -> None:
    """Parse the options, run the three measurements, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--jobs", type=int, default=2_000)
    p.add_argument("--reps", type=int, default=5, help="repetitions of the small backup")
    p.add_argument("--points", type=int, default=1_000_000, help="restore points to list")
    p.add_argument(
        "--only", choices=("tick", "jobs", "overhead", "points"), action="append",
        help="run only these measurements (repeatable; default: all)",
    )  # fmt: skip
    args = p.parse_args()
    only = set(args.only or ("tick", "jobs", "overhead", "points"))
    sys.path.insert(0, str(ROOT / "src"))
    from safehold.service.database import open_database

    rows: list[tuple[str, str]] = []
    with scratch("sh-bench-svc-") as work:
        with open_database(None, work / "state") as db:
            if "tick" in only:
                rows += bench_tick(db.engine, args.plans)
            if "jobs" in only:
                rows += bench_jobs(db.conninfo, args.jobs, args.workers)
            if "points" in only:
                rows += bench_points(db.engine, args.points)
        if "overhead" in only:
            rows += bench_overhead(work, work / "state2", args.reps)
    print_table(rows)


if __name__ == "__main__":
    main()
