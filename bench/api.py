"""The API's figures: listing restore points with a million in the catalog, and the memory
of one ``safehold serve`` holding hundreds of agents' long polls.

Run from the repository root with the project's environment::

    .venv/bin/python bench/api.py [--points 1000000] [--agents 500] [--seconds 60]

It starts a private PostgreSQL cluster in a temporary state folder and a real ``safehold
serve --listen`` (one worker) on it, then:

1. **restore points**: writes ``--points`` points over 100 plans of one project, and
   times ``GET /api/v1/restore-points`` (the project's newest page), a plan's newest page,
   and a plan's page 5,000 points back (through the cursor): median and p99 of 300
   sequential calls each, and calls per second with 8 clients at once;
2. **agents**: ``--agents`` agents (their own tokens) register and long-poll
   ``/api/v1/agent/jobs/next`` for ``--seconds`` seconds while each heart-beats every 5 s;
   the serve process's peak memory (VmHWM) and CPU are read from ``/proc``;
3. **metrics**: ``--plans`` plans (1,000) in 10 projects, each with 30 ended backups, their
   restore points and slots, and ``GET /metrics`` timed from loopback (median and p99 of 50).

Figures go to standard output as a Markdown table (docs/benchmarks.md, "The API").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from harness import ROOT, latencies, print_table, scratch  # bench/harness.py
from sqlalchemy import Engine, text


def _start_serve(work: Path, state_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = work / "safehold.yaml"
    (work / "data").mkdir(exist_ok=True)
    config.write_text(
        f"repository: {{location: {work / 'repo'}, password: bench}}\n"
        f"service: {{state_dir: {state_dir}}}\n"
        f"sources:\n  idle: {{type: directory, paths: [{work / 'data'}], schedule: '@yearly'}}\n"
    )
    log = work / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEHOLD_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "safehold", "serve", "--config", str(config), "--workers",
             "1", "--listen", "127.0.0.1:0"], stdout=out, stderr=out, env=env,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.findall(r"API listening on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return proc, found[0]
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.2)
    raise TimeoutError("serve did not listen")


def bench_points(engine: Engine, url: str, count: int) -> list[tuple[str, str]]:
    """Restore points through the API with ``count`` of them in the catalog."""
    from safehold.api.tokens import create_token

    per_plan = max(1, count // 100)
    started = time.perf_counter()
    with engine.begin() as db:
        db.execute(text(
            "INSERT INTO plans (project, name, origin, schedule) "
            "SELECT 'bench', 'p' || i, 'api', '@daily' FROM generate_series(0, 99) i"
        ))  # fmt: skip
        db.execute(
            text(
                "INSERT INTO restore_points (plan_id, project, snapshot_id, taken_at, chain_id, "
                "  chain_seq) "
                "SELECT p.id, p.project, md5(p.id || '-' || i) || md5(i || '-' || p.id), "
                "  timestamptz '2020-01-01' + i * interval '1 hour', md5(p.id || '/' || i / 10),"
                "  i % 10 FROM plans p, generate_series(1, :n) i WHERE p.project = 'bench'"
            ),
            {"n": per_plan},
        )
        db.execute(text("ANALYZE restore_points"))
    rows = [(f"write {per_plan * 100:,} restore points (setup)",
             f"{time.perf_counter() - started:.1f} s")]  # fmt: skip
    token = create_token(engine, project="bench", role="viewer", name="bench").token
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        page = client.get("/api/v1/plans/p7/restore-points", params={"limit": 500}).json()
        for _ in range(9):
            after = {"limit": 500, "cursor": page["next_cursor"]}
            page = client.get("/api/v1/plans/p7/restore-points", params=after).json()
        deep = page["next_cursor"]
        cases = [
            ("the project's newest page", "/api/v1/restore-points", {}),
            ("a plan's newest page", "/api/v1/plans/p42/restore-points", {}),
            ("a plan's page 5,000 points back", "/api/v1/plans/p7/restore-points",
             {"cursor": deep}),
        ]  # fmt: skip
        for what, path, params in cases:

            def call(path: str = path, params: dict[str, str] = params) -> None:
                reply = client.get(path, params=params)
                assert reply.status_code == 200 and len(reply.json()["items"]) == 50, reply.text

            for _ in range(20):
                call()  # warm: connections, the server's caches
            median, p99 = latencies(call, 300)
            rows.append((f"GET {what}, 50 a page: median / p99", f"{median:.1f} / {p99:.1f} ms"))
    done = 0
    lock = threading.Lock()

    def client_loop(stop_at: float) -> None:
        nonlocal done
        with httpx.Client(base_url=url, headers=headers, timeout=60) as mine:
            while time.monotonic() < stop_at:
                mine.get("/api/v1/restore-points")
                with lock:
                    done += 1

    stop_at = time.monotonic() + 10
    threads = [threading.Thread(target=client_loop, args=(stop_at,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows.append(("the project's newest page, 8 clients at once", f"{done / 10:,.0f} calls/s"))
    return rows


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            name, value = line.split(":", 1)
            out[name] = int(value.split()[0]) * 1024
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_agents(
    engine: Engine, url: str, pid: int, agents: int, seconds: float
) -> list[tuple[str, str]]:
    """``agents`` agents long-polling ``serve`` for ``seconds``: its memory and CPU."""
    from safehold.api.tokens import create_token

    tokens = [create_token(engine, project="fleet", role="agent", name=f"a{i}").token
              for i in range(agents)]  # fmt: skip
    before = _proc_status(pid)
    polls = 0
    errors = 0
    failures: list[str] = []

    async def agent(i: int, token: str, stop_at: float, client: httpx.AsyncClient) -> None:
        nonlocal errors
        try:
            await agent_calls(i, token, stop_at, client)
        except httpx.HTTPError as exc:
            errors += 1
            failures.append(f"{type(exc).__name__}: {exc}")

    async def agent_calls(i: int, token: str, stop_at: float, client: httpx.AsyncClient) -> None:
        nonlocal polls, errors
        headers = {"Authorization": f"Bearer {token}"}
        await asyncio.sleep(i * 0.01)  # agents start over a few seconds, not all in one
        reply = await client.post("/api/v1/agent/register", headers=headers,
                                  json={"name": f"vm{i}"})  # fmt: skip
        if reply.status_code != 200:
            errors += 1
            return
        next_beat = time.monotonic() + 5
        while time.monotonic() < stop_at:
            wait = max(0.0, min(20.0, stop_at - time.monotonic()))
            reply = await client.get("/api/v1/agent/jobs/next", headers=headers,
                                     params={"wait": wait})  # fmt: skip
            polls += 1
            if reply.status_code not in (200, 204):
                errors += 1
            if time.monotonic() >= next_beat:
                await client.post("/api/v1/agent/heartbeat", headers=headers)
                next_beat = time.monotonic() + 5

    async def fleet() -> int:
        limits = httpx.Limits(max_connections=agents + 10, max_keepalive_connections=agents + 10)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            stop_at = time.monotonic() + seconds
            await asyncio.gather(*(agent(i, t, stop_at, client) for i, t in enumerate(tokens)))
            viewer = create_token(engine, project="fleet", role="viewer").token
            online = await client.get(
                "/api/v1/agents", headers={"Authorization": f"Bearer {viewer}"}
            )
            return sum(1 for a in online.json() if a["status"] == "online")

    cpu_before = _cpu_seconds(pid)
    started = time.monotonic()
    online = asyncio.run(fleet())
    took = time.monotonic() - started
    cpu = _cpu_seconds(pid) - cpu_before
    after = _proc_status(pid)
    return [
        (f"{agents} agents long-polling for {seconds:.0f} s: online at the end", f"{online}"),
        ("long polls answered (204 after their wait); failed calls",
         f"{polls:,}; {errors} {sorted(set(failures))[:3]}"),
        ("serve's memory: before / peak (VmHWM)",
         f"{before['VmRSS'] / 2**20:.0f} MiB / {after['VmHWM'] / 2**20:.0f} MiB"),
        ("serve's CPU while they poll", f"{100 * cpu / took:.0f} % of one core"),
    ]  # fmt: skip


def bench_metrics(engine: Engine, url: str, plans: int, runs: int = 30) -> list[tuple[str, str]]:
    """``GET /metrics`` (from loopback, every project) with ``plans`` plans, each with
    ``runs`` ended backups (a fifth failed), as many restore points and slots."""
    started = time.perf_counter()
    with engine.begin() as db:
        db.execute(text(
            "INSERT INTO plans (project, name, origin, schedule, settings) "
            "SELECT 'm' || (i % 10), 'p' || i, 'api', '@daily', '{\"rpo_target\": 86400}' "
            "FROM generate_series(0, :n - 1) i"
        ), {"n": plans})  # fmt: skip
        db.execute(text(
            "INSERT INTO runs (id, plan_id, kind, trigger, state, queued_at, started_at, "
            "  ended_at, bytes_read, bytes_added) "
            "SELECT gen_random_uuid(), p.id, 'backup', 'schedule', "
            "  CASE WHEN i % 5 = 0 THEN 'failed' ELSE 'succeeded' END, "
            "  now() - i * interval '1 day', now() - i * interval '1 day' + interval '2 s', "
            "  now() - i * interval '1 day' + (i * 37 % 3600) * interval '1 s', "
            "  1000000 + i, 1000 + i FROM plans p, generate_series(1, :r) i "
            "WHERE p.project LIKE 'm%'"
        ), {"r": runs})  # fmt: skip
        db.execute(text(
            "INSERT INTO restore_points (plan_id, project, snapshot_id, run_id, taken_at, "
            "  bytes_added) SELECT r.plan_id, p.project, md5(r.id::text) || md5(r.id::text), "
            "  r.id, r.started_at, r.bytes_added FROM runs r JOIN plans p ON p.id = r.plan_id "
            "WHERE r.state = 'succeeded' AND p.project LIKE 'm%'"
        ))  # fmt: skip
        db.execute(text(
            "INSERT INTO slots (plan_id, slot_at, state, run_id, ended_at) "
            "SELECT r.plan_id, r.queued_at, r.state, r.id, r.ended_at FROM runs r "
            "JOIN plans p ON p.id = r.plan_id WHERE p.project LIKE 'm%'"
        ))  # fmt: skip
        db.execute(text("ANALYZE"))
    rows = [(f"write {plans:,} plans with {runs} runs, points and slots each (setup)",
             f"{time.perf_counter() - started:.1f} s")]  # fmt: skip
    with httpx.Client(base_url=url, timeout=60) as client:
        body = client.get("/metrics").text

        def call() -> None:
            assert client.get("/metrics").status_code == 200

        for _ in range(3):
            call()
        median, p99 = latencies(call, 50)
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    rows.append((f"GET /metrics, {plans:,} plans ({series:,} series, {len(body) / 2**10:.0f} "
                 "KiB): median / p99 of 50", f"{median:.0f} / {p99:.0f} ms"))  # fmt: skip
    return rows


def main() -> None:
    """Parse the options, run the measurements, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--agents", type=int, default=500)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--plans", type=int, default=1000, help="plans for --only metrics")
    p.add_argument("--only", choices=("points", "agents", "metrics"), action="append")
    args = p.parse_args()
    only = set(args.only or ("points", "agents", "metrics"))
    sys.path.insert(0, str(ROOT / "src"))
    from safehold.service.database import open_database

    rows: list[tuple[str, str]] = []
    with scratch("sh-bench-api-") as work, open_database(None, work / "state") as db:
        proc, url = _start_serve(work, work / "state")
        try:
            if "points" in only:
                rows += bench_points(db.engine, url, args.points)
            if "agents" in only:
                rows += bench_agents(db.engine, url, proc.pid, args.agents, args.seconds)
            if "metrics" in only:
                rows += bench_metrics(db.engine, url, args.plans)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    print_table(rows)


if __name__ == "__main__":
    main()
