"""The dashboard's overview with 1,000 plans and a year of their slots: how long one page
takes to answer (issue 20's target: under 200 ms).

Run from the repository root with the project's environment::

    .venv/bin/python bench/web.py [--plans 1000] [--days 365] [--reps 50]

It starts a private PostgreSQL cluster in a temporary state folder, writes a configuration
file of ``--plans`` daily plans, records them in the catalog as ``serve`` does, then writes
``--days`` days of slots for each (a run for each slot that ran: nine in ten succeeded, the
rest failed, skipped or missed) straight into the catalog. It then logs in through the
dashboard's form and times ``GET /ui/`` (the whole page: the banner over every plan, the
first page of cards with their strips, the HTML) in the API's app, in process (Starlette's
test client, no socket): p50, p95 and p99 of ``--reps`` calls after three warm ones, and
the same for a filtered overview (``?state=failing``) and a kind's (``?kind=command``),
with the CPU time this process spent a call (the page's Python side; the rest is
PostgreSQL and waiting, which a loaded machine lengthens). The overview's data alone
(``web.overview.overview``, its three queries and the cards, no HTML) is timed too.

Figures go to standard output as a Markdown table (docs/benchmarks.md, "The dashboard").
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness import ROOT, print_table, scratch  # bench/harness.py
from sqlalchemy import Engine, text


def _config(work: Path, plans: int) -> Path:
    (work / "data").mkdir(exist_ok=True)
    path = work / "safehold.yaml"
    lines = [f"repository: {{location: {work / 'repo'}, password: bench}}", "sources:"]
    kinds = ("directory", "directory", "directory", "command")
    for i in range(plans):
        kind = kinds[i % len(kinds)]
        where = f"paths: [{work / 'data'}]" if kind == "directory" else "command: 'true'"
        lines.append(f"  plan-{i:04d}: {{type: {kind}, {where}, schedule: '@daily'}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _fill(engine: Engine, days: int) -> int:
    """A slot per plan and day for ``days`` days, each with its run; the count written."""
    with engine.begin() as db:
        db.execute(text("SET LOCAL synchronous_commit = off"))
        db.execute(
            text(
                """
                WITH s AS (
                  SELECT p.id AS plan_id, d AS slot_at, gen_random_uuid() AS run_id,
                    CASE WHEN random() < 0.9 THEN 'succeeded' WHEN random() < 0.5 THEN 'failed'
                         WHEN random() < 0.5 THEN 'skipped' ELSE 'missed' END AS state
                  FROM plans p, generate_series(
                    date_trunc('day', now()) - make_interval(days => :days),
                    date_trunc('day', now()) - interval '1 day', interval '1 day') d
                ), r AS (
                  INSERT INTO runs (id, plan_id, kind, trigger, state, queued_at, started_at,
                                    ended_at, bytes_read, bytes_added)
                  SELECT run_id, plan_id, 'backup', 'schedule', state, slot_at, slot_at,
                    slot_at + make_interval(secs => 20 + random() * 300),
                    (random() * 1e9)::bigint, (random() * 1e7)::bigint
                  FROM s WHERE state IN ('succeeded', 'failed')
                )
                INSERT INTO slots (plan_id, slot_at, state, run_id)
                SELECT plan_id, slot_at, state,
                  CASE WHEN state IN ('succeeded', 'failed') THEN run_id END FROM s
                """
            ),
            {"days": days},
        )
        count = int(db.execute(text("SELECT count(*) FROM slots")).scalar_one())
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as db:
        db.execute(text("ANALYZE"))  # as autovacuum would have by then
    return count


def percentiles(call: Callable[[], object], reps: int) -> tuple[str, float]:
    """The p50, p95 and p99 of ``reps`` calls after three warm ones ("77 / 101 / 234 ms"),
    and the CPU time this process spent a call, in milliseconds."""
    for _ in range(3):
        call()
    times = []
    cpu = time.process_time()
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    cpu = (time.process_time() - cpu) / reps * 1000
    times.sort()

    def at(share: float) -> float:
        return times[min(len(times) - 1, int(len(times) * share))]

    return f"{statistics.median(times):.0f} / {at(0.95):.0f} / {at(0.99):.0f} ms", cpu


def main() -> None:
    """Parse the options, run the measurement, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plans", type=int, default=1000)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--reps", type=int, default=200)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fastapi.testclient import TestClient

    from safehold import runtime
    from safehold.api.app import create_app
    from safehold.api.tokens import create_token
    from safehold.clock import utcnow
    from safehold.config import load_config
    from safehold.service.database import open_database
    from safehold.service.plans import plans_from_config, sync_plans
    from safehold.web.overview import overview

    rows: list[tuple[str, str]] = []
    with scratch("sh-bench-web-") as work, open_database(None, work / "state") as db:
        specs = plans_from_config(load_config(str(_config(work, args.plans))))
        sync_plans(db.engine, specs.values())
        started = time.perf_counter()
        slots = _fill(db.engine, args.days)
        took = time.perf_counter() - started
        # A year of slots is long vacuumed in real life: settle it now, or autovacuum's
        # pass over the new rows lands in the middle of the timing.
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as quiet:
            quiet.execute(text("VACUUM (ANALYZE) slots, runs, plans"))
        what = f"write {slots:,} slots ({args.plans:,} plans x {args.days} days) and runs"
        rows.append((what, f"{took:.1f} s"))
        token = create_token(db.engine, project="default", role="viewer").token
        load_before = os.getloadavg()[0]
        runtime.configure(runtime.SERVICE)  # as `safehold serve` runs
        app = create_app(db.engine, plans=lambda: specs)
        runtime.settled()
        with TestClient(app, base_url="http://127.0.0.1") as client:
            logged = client.post("/ui/login", data={"token": token}, follow_redirects=False)
            assert logged.status_code == 303, logged.text
            first = client.get("/ui/")
            assert first.status_code == 200, first.text
            # The banner counts every plan; the cards come a page at a time.
            assert f"of {args.plans} plans" in first.text, first.text[:2000]
            shown = first.text.count("data-plan=")
            rows.append(("cards on the first page (failing first)", f"{shown}"))
            rows.append(("the overview's size", f"{len(first.content) / 1024:.0f} KiB"))
            for what, path in (("GET /ui/", "/ui/"),
                               ("GET /ui/?state=failing", "/ui/?state=failing"),
                               ("GET /ui/?kind=command", "/ui/?kind=command")):  # fmt: skip
                figures, cpu = percentiles(lambda path=path: client.get(path), args.reps)
                rows.append((f"{what}: p50 / p95 / p99 of {args.reps}; this process's CPU "
                             "a call", f"{figures}; {cpu:.0f} ms"))  # fmt: skip
        figures, cpu = percentiles(
            lambda: overview(db.engine, specs, "default", utcnow()), args.reps
        )
        rows.append(("the data alone (overview(), no HTML): p50 / p95 / p99; CPU a call",
                     f"{figures}; {cpu:.0f} ms"))  # fmt: skip
    print_table(rows, load_before=load_before)


if __name__ == "__main__":
    main()
