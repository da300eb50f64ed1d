"""Verification slices on a real repository with several snapshots and a real catalog: the
rotation covers every pack within its period under a fake clock, keeps its progress
across restarts, takes new packs in and lets pruned ones go; a damaged pack fails the
slice that reads it, naming the snapshots affected; the service's tick and workers run
the verify plan on its schedule."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from procrastinate import App, PsycopgConnector
from sqlalchemy import Engine, create_engine, text

from safehold.clock import FakeClock
from safehold.config import load_config
from safehold.policy.schedule import parse_schedule
from safehold.repository.repository import Repository
from safehold.service.cluster import Cluster
from safehold.service.coverage import coverage, coverages
from safehold.service.database import prepare
from safehold.service.jobs import Jobs, register
from safehold.service.plans import VERIFY_PROJECT, plans_from_config, sync_plans
from safehold.service.tick import tick
from safehold.service.verify import load_rotation, run_slice_now, slice_timing
from safehold.service.verify_slice import SliceResult, choose_slice, slice_budget
from safehold.storage.local import LocalStorage
from tests.conftest import PASSWORD, CliResult, CliRunner
from tests.servers.private_cluster import fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

DAY = timedelta(days=1)
T0 = datetime(2026, 3, 1, tzinfo=UTC)
BACKUPS = 6


def ok(res: CliResult) -> CliResult:
    assert res.code == 0, res.output
    return res


@dataclass
class Scene:
    engine: Engine
    conninfo: str
    url: str
    repo: str
    src: Path
    tmp: Path
    cli: CliRunner
    snapshots: list[str] = field(default_factory=list)
    packs_of: list[set[str]] = field(default_factory=list)  # the packs each backup added

    def open(self) -> Repository:
        return Repository.open(LocalStorage(Path(self.repo)), PASSWORD)

    def packs(self) -> set[str]:
        return {p.hex() for p in self.open().list_packs()}

    def data_pack(self, n: int) -> str:
        """The biggest pack backup ``n`` added: its new file's data."""
        sizes = {p.hex(): size for p, size in self.open().list_packs().items()}
        return max(self.packs_of[n], key=lambda p: sizes[p])

    def backup(self) -> str:
        """A backup of the source with one more file of its own: a pack of its own."""
        before = self.packs()
        n = len(self.snapshots)
        (self.src / f"f{n}.bin").write_bytes(os.urandom(200_000 + 10_000 * n))
        done = json.loads(ok(self.cli("-r", self.repo, "backup", str(self.src), "--json")).stdout)
        self.snapshots.append(done["snapshot"])
        self.packs_of.append(self.packs() - before)
        return str(done["snapshot"])

    def slice(self, clock: FakeClock, period: str = "5d") -> SliceResult:
        schedule = parse_schedule("@daily", key="verify")
        timing = slice_timing(schedule, period, 1.25, clock.now())
        return run_slice_now(self.engine, self.open(), self.repo, timing)

    def last_read(self) -> dict[str, datetime | None]:
        return {s.pack_id: s.last_read for s in load_rotation(self.engine, self.repo)}


@pytest.fixture
def scene(
    private_cluster: Cluster,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    cli: CliRunner,
    cli_repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Scene]:
    name = "verify_" + request.node.name[:40].lower()
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    monkeypatch.setenv("SH_TEST_PW", PASSWORD.decode())
    monkeypatch.setenv("SAFEHOLD_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    found = Scene(
        engine,
        private_cluster.conninfo(name),
        engine.url.render_as_string(hide_password=False).replace(
            "postgresql+psycopg://", "postgresql://"
        ),
        cli_repo,
        src,
        tmp_path,
        cli,
    )
    for _ in range(BACKUPS):
        found.backup()
    try:
        yield found
    finally:
        engine.dispose()


def test_the_budget_and_the_order_of_a_slice() -> None:
    """Pure parts: a slice's share of the bytes, at least one pack; damaged packs, then
    never-read ones, then the least recently read; overdue packs past the budget."""
    from safehold.policy.duration import parse_duration
    from safehold.service.verify_slice import PackState

    assert slice_budget(3000, 86400, 30 * 86400, 1.0) == 100
    assert slice_budget(3000, 86400, 30 * 86400, 1.25) == 125
    assert slice_budget(3000, 40 * 86400, 30 * 86400, 1.25) == 3000  # never over everything
    assert slice_budget(0, 86400, 86400, 1.25) == 0
    listed = {"a": 100, "b": 100, "c": 100, "d": 100, "e": 100}
    known = {
        "a": PackState("a", 100, T0, T0 + 3 * DAY, "ok"),
        "b": PackState("b", 100, T0, T0 + 1 * DAY, "ok"),
        "c": PackState("c", 100, T0, T0 + 4 * DAY, "damaged"),
        "d": PackState("d", 100, T0, None, None),
    }  # "e" is new
    now = T0 + 5 * DAY
    period = parse_duration("30d")
    picked = choose_slice(listed, known, budget=250, period=period, next_slice=now + DAY, now=now)
    assert picked == ["c", "d", "e"]
    # Nothing fits a budget of 0 bytes: still one pack (and the damaged one, always).
    assert choose_slice(listed, known, budget=0, period=period, next_slice=now + DAY, now=now) == [
        "c"
    ]
    # With a 5-day period, "d" (first seen 5 days ago, never read) and "b" (read 4 days
    # ago) would be overdue before the next slice: read now whatever the budget.
    short = parse_duration("5d")
    picked = choose_slice(listed, known, budget=0, period=short, next_slice=now + DAY, now=now)
    assert picked == ["c", "d", "b"]


def test_slices_cover_every_pack_within_the_period(scene: Scene) -> None:
    clock = FakeClock(T0)
    stored = scene.packs()
    assert len(stored) >= BACKUPS
    total = sum(scene.open().list_packs().values())
    for day in range(15):
        result = scene.slice(clock)
        assert result.ok, result.errors
        assert 1 <= len(result.read) < len(stored)  # a slice, not everything
        biggest = max(result.listed.values())
        assert result.bytes_read <= result.budget + biggest
        assert result.budget == slice_budget(total, DAY.total_seconds(), 5 * 86400, 1.25)
        reads = scene.last_read()
        assert set(reads) == stored
        if day >= 4:
            # From the fifth slice on, every pack was read within the last five days.
            assert all(r is not None and r > clock.now() - 5 * DAY for r in reads.values())
            found = coverage(scene.engine, scene.repo, "5d", clock.now())
            assert found.ratio == 1.0 and found.never_read == 0 and found.damaged_packs == 0
            assert found.bytes_total == total == found.bytes_read_within_period
        clock.advance(DAY)
    # Without slices, the pack read longest ago leaves the period first; the last slice's
    # are still in it.
    reads = scene.last_read()
    oldest = min(r for r in reads.values() if r is not None)
    assert oldest < max(r for r in reads.values() if r is not None)
    stale = coverage(scene.engine, scene.repo, "5d", oldest + 5 * DAY + timedelta(hours=1))
    assert 0 < stale.ratio < 1.0 and stale.oldest_read == oldest


def test_progress_survives_a_restart_and_new_packs_join(scene: Scene) -> None:
    clock = FakeClock(T0)
    first = scene.slice(clock)
    clock.advance(DAY)
    second = scene.slice(clock)
    assert not set(first.read) & set(second.read)  # the second slice goes on, not over
    before = coverage(scene.engine, scene.repo, "5d", clock.now())
    assert 0 < before.ratio < 1 and before.never_read > 0
    # A restart: a new engine, nothing kept in the process.
    scene.engine.dispose()
    scene.engine = create_engine(scene.url.replace("postgresql://", "postgresql+psycopg://"))
    after = coverage(scene.engine, scene.repo, "5d", clock.now())
    assert after == before
    clock.advance(DAY)
    third = scene.slice(clock)
    assert not set(third.read) & (set(first.read) | set(second.read))
    # A new backup: its pack joins the rotation, never read, so it is read first.
    scene.backup()
    new = scene.packs_of[-1]
    assert new and not new & set(scene.last_read())
    clock.advance(DAY)
    fourth = scene.slice(clock)
    assert new <= set(fourth.read)
    assert new <= set(scene.last_read())


def test_pruned_packs_leave_the_rotation(scene: Scene) -> None:
    clock = FakeClock(T0)
    scene.slice(clock)
    assert set(scene.last_read()) == scene.packs()
    # Forget every snapshot but the newest; remove the files only the first ones held
    # first, so that their packs hold nothing the newest needs.
    ok(scene.cli("-r", scene.repo, "forget", *scene.snapshots[:-1]))
    ok(scene.cli("-r", scene.repo, "prune", "--max-unused", "0%"))
    stored = scene.packs()
    clock.advance(DAY)
    scene.slice(clock)
    assert set(scene.last_read()) == stored


def test_a_damaged_pack_fails_the_next_slice_naming_the_affected_snapshots(scene: Scene) -> None:
    clock = FakeClock(T0)
    scene.slice(clock)
    clock.advance(DAY)
    target = scene.data_pack(2)
    path = Path(scene.repo) / "data" / target[:2] / target
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    path.write_bytes(bytes(raw))
    # Make it the first in line: every other pack read just now.
    with scene.engine.begin() as db:
        db.execute(
            text(
                "UPDATE verify_packs SET last_read = :t, last_result = 'ok' "
                "WHERE repository = :r AND pack_id <> :p"
            ),
            {"t": clock.now(), "r": scene.repo, "p": target},
        )
        db.execute(
            text("UPDATE verify_packs SET last_read = :t WHERE pack_id = :p"),
            {"t": T0 - DAY, "p": target},
        )
    result = scene.slice(clock)
    assert not result.ok
    assert result.damaged_packs == [target] and result.read[target] == "damaged"
    # The third backup and every later one (the source keeps its files) need the pack.
    assert set(result.snapshots) == set(scene.snapshots[2:])
    message = result.describe_damage()
    assert target[:8] in message and all(s[:8] in message for s in scene.snapshots[2:])
    assert scene.snapshots[1][:8] not in message
    found = coverage(scene.engine, scene.repo, "5d", clock.now())
    assert found.damaged_packs == 1 and found.ratio < 1.0
    # Damage stays in line: the next slice reads the pack again, and fails again.
    clock.advance(DAY)
    again = scene.slice(clock)
    assert target in again.read and not again.ok


def _config(scene: Scene, verify: str) -> Path:
    path = scene.tmp / "safehold.yaml"
    path.write_text(
        f"repository: {{location: {scene.repo}, password_env: SH_TEST_PW, verify: {verify}}}\n"
        f"sources:\n  job:\n    type: directory\n    paths: [{scene.src}]\n"
    )
    return path


def _run_verify(scene: Scene, path: Path, now: datetime) -> tuple[uuid.UUID, dict[str, Any]]:
    """A tick at ``now`` over the file's plans, and the verify run it queued, executed by a
    worker (a real child process)."""
    specs = plans_from_config(load_config(str(path)))
    ids = sync_plans(scene.engine, specs.values())
    key = f"{VERIFY_PROJECT}/{scene.repo}"
    result = tick(scene.engine, specs, ids, now)
    runs = [r for r in result.new_runs if r.plan_key == key]
    assert len(runs) == 1, result

    async def go() -> None:
        app = App(connector=PsycopgConnector(conninfo=scene.conninfo))
        register(app)
        async with app.open_async():
            jobs = Jobs(
                app, scene.engine, plans=lambda: specs, state_dir=scene.tmp / "state",
                worker="w", clock=FakeClock(now),
            )  # fmt: skip
            await jobs.execute(runs[0].run_id)

    asyncio.run(go())
    with scene.engine.connect() as db:
        row = db.execute(text("SELECT * FROM runs WHERE id = :r"), {"r": runs[0].run_id}).one()
    return runs[0].run_id, dict(row._mapping)


def test_the_service_runs_the_verify_plan_on_its_schedule(scene: Scene) -> None:
    path = _config(scene, "{period: 5d, schedule: '@daily'}")
    specs = plans_from_config(load_config(str(path)))
    spec = specs[f"{VERIFY_PROJECT}/{scene.repo}"]
    assert spec.kind == "verify" and spec.verify_period == "5d"
    assert spec.lock == f"verify:{scene.repo}"
    now = datetime.now(UTC) + DAY  # the plan's row is made now: its first slot is tomorrow
    run_id, run = _run_verify(scene, path, now)
    assert (run["kind"], run["state"], run["trigger"]) in {
        ("verify", "succeeded", "schedule"),
        ("verify", "succeeded", "catch_up"),
    }, run
    assert run["params"]["packs_read"] >= 1 and run["params"]["snapshots"] == []
    reads = scene.last_read()
    assert set(reads) == scene.packs()
    assert sum(r is not None for r in reads.values()) == run["params"]["packs_read"]
    assert not (scene.tmp / "state" / "verify" / f"{run_id}.json").exists()
    (found,) = coverages(scene.engine, specs, now)
    assert found.repository == scene.repo and 0 < found.ratio < 1


def test_a_damaged_pack_fails_the_service_s_run_naming_the_snapshots(scene: Scene) -> None:
    path = _config(scene, "{period: 1d, schedule: '@daily'}")  # a slice reads everything
    target = scene.data_pack(3)
    pack = Path(scene.repo) / "data" / target[:2] / target
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    _run_id, run = _run_verify(scene, path, datetime.now(UTC) + DAY)
    assert (run["kind"], run["state"]) == ("verify", "failed")
    assert run["params"]["damaged_packs"] == [target]
    assert set(run["params"]["snapshots"]) == set(scene.snapshots[3:])
    assert target[:8] in run["error"] and scene.snapshots[3][:8] in run["error"]
    assert "restore" in run["hint"]
    assert PASSWORD.decode() not in json.dumps(run, default=str)


def test_the_command_reads_a_slice_and_shows_the_coverage(scene: Scene) -> None:
    path = _config(scene, "{period: 3d, schedule: '@daily'}")
    service = ["--config", str(path), "--database", scene.url, "--state-dir", str(scene.tmp / "s")]
    env = {"SH_TEST_PW": PASSWORD.decode()}
    status = ok(scene.cli("--json", "verify", "--status", *service, env=env))
    (before,) = json.loads(status.stdout)
    assert (before["packs"], before["coverage"], before["period"]) == (0, 1.0, "3d")
    done = json.loads(ok(scene.cli("--json", "verify", *service, env=env)).stdout)
    assert done["outcome"] == "success" and 1 <= len(done["read"]) < len(done["listed"])
    assert set(done["listed"]) == scene.packs()
    (after,) = json.loads(ok(scene.cli("--json", "verify", "--status", *service, env=env)).stdout)
    assert after["packs"] == len(scene.packs()) and 0 < after["coverage"] < 1
    assert after["bytes_read_within_period"] == sum(done["listed"][p] for p in done["read"])
    text_ = ok(scene.cli("verify", "--status", *service, env=env)).stdout
    assert scene.repo in text_ and "COVERAGE" in text_
    # Damage in a pack the next slice reads: exit code 4, the snapshots named.
    target = scene.data_pack(4)
    with scene.engine.begin() as db:  # first in line: every other pack read just now
        db.execute(
            text(
                "UPDATE verify_packs SET last_read = now(), last_result = 'ok' WHERE pack_id <> :p"
            ),
            {"p": target},
        )
        db.execute(
            text("UPDATE verify_packs SET last_read = NULL WHERE pack_id = :p"), {"p": target}
        )
    pack = Path(scene.repo) / "data" / target[:2] / target
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0x10
    pack.write_bytes(bytes(raw))
    failed = scene.cli("verify", *service, env=env)
    assert failed.code == 4, failed.output
    assert target[:8] in failed.stderr and scene.snapshots[4][:8] in failed.stderr
    # check --read-packs reads exactly the packs named, and finds the same damage.
    listing = scene.tmp / "packs.txt"
    listing.write_text(f"# one pack\n{target}\n")
    checked = scene.cli("--json", "-r", scene.repo, "check", "--read-packs", str(listing))
    assert checked.code == 4, checked.output
    report = json.loads(checked.stdout)
    assert report["counts"]["packs_read"] == 1 and report["read_data"] == "1 packs"
    assert {e["snapshot"] for e in report["errors"] if e.get("snapshot")} == set(
        scene.snapshots[4:]
    )
    listing.write_text("not-a-pack\n")
    bad = scene.cli("-r", scene.repo, "check", "--read-packs", str(listing))
    assert bad.code == 2 and "line 1" in bad.stderr and "not a pack id" in bad.stderr


def test_a_damaged_pack_fails_the_slice_and_the_drill_and_both_alert(scene: Scene) -> None:
    """Issue 19's proof of the whole chain: one flipped byte in a pack; the next slice
    and the next drill fail, and the alerts name the snapshots affected."""
    from safehold.service.alerts_run import Alerter

    path = _config(scene, "{period: 1d, schedule: '@daily'}")
    path.write_text(path.read_text() + "    drill: {rto_target: 15m}\n")
    target = scene.data_pack(3)
    pack = Path(scene.repo) / "data" / target[:2] / target
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    _run_id, run = _run_verify(scene, path, datetime.now(UTC) + DAY)
    assert (run["kind"], run["state"]) == ("verify", "failed")
    service = ["--config", str(path), "--database", scene.url, "--state-dir", str(scene.tmp / "s")]
    drilled = scene.cli("--json", "drill", "job", "--snapshot", scene.snapshots[-1][:12],
                        *service, env={"SH_TEST_PW": PASSWORD.decode()})  # fmt: skip
    assert drilled.code == 4, drilled.output  # ran, and did not prove the backup
    alerter = Alerter(scene.engine)
    alerter.configure(load_config(str(path)))
    opened = {finding.kind: finding for finding in alerter.evaluate_once().opened}
    assert {"verify_damage", "drill_failed"} <= set(opened), opened
    damage = opened["verify_damage"].error or ""
    assert all(snap[:8] in damage for snap in scene.snapshots[3:]), damage
    assert scene.snapshots[-1][:8] in (opened["drill_failed"].hint or "")
    assert alerter.evaluate_once().opened == []  # told once
