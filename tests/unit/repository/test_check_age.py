"""check --max-age: the newest snapshot of each backup schedule must be recent."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from safehold.clock import FakeClock
from safehold.crypto.keys import KdfParams
from safehold.engine.backup import BackupOptions, run_backup
from safehold.repository.check import OVERDUE, WARNING, CheckOptions, MaxAge, check_repository
from safehold.repository.check.age import snapshots_overdue
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.storage.memory import MemoryStorage

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def snap(sid: str, age: timedelta, host: str = "db1", paths: tuple[str, ...] = ("/srv",),
         source: str = "") -> Snapshot:  # fmt: skip
    return Snapshot(
        id=sid * 8, time=NOW - age, tree="0" * 64, paths=list(paths), hostname=host,
        chain="0" * 32, source_name=source,
    )  # fmt: skip


def rule(age: timedelta = DAY, **kw: object) -> MaxAge:
    return MaxAge(age=age, limit="1d", **kw)  # type: ignore[arg-type]


def test_each_schedule_is_judged_by_its_newest_snapshot() -> None:
    snaps = [
        snap("a", 5 * DAY),
        snap("b", 2 * DAY),  # newest of db1:/srv, too old
        snap("c", 3 * DAY, paths=("/etc",)),
        snap("d", timedelta(hours=2), paths=("/etc",)),  # db1:/etc is fine
        snap("e", 9 * DAY, host="web", source="pg-main"),  # too old
        snap("f", timedelta(hours=1), host="web", source="other"),
    ]
    problems = snapshots_overdue(snaps, rule(), NOW)
    assert [(p.severity, p.code, p.subject, p.snapshot) for p in problems] == [
        (WARNING, OVERDUE, "host db1, paths /srv", "b" * 8),
        (WARNING, OVERDUE, "host web, source pg-main", "e" * 8),
    ]
    assert "is 2 d old: older than 1d" in problems[0].message
    assert snapshots_overdue(snaps, rule(age=10 * DAY), NOW) == []


def test_filters_choose_the_schedules_and_none_matching_is_overdue() -> None:
    snaps = [snap("a", timedelta(hours=1)), snap("b", 3 * DAY, host="web", source="pg")]
    assert snapshots_overdue(snaps, rule(host="db1"), NOW) == []
    [only] = snapshots_overdue(snaps, rule(source="pg"), NOW)
    assert only.subject == "host web, source pg"
    [missing] = snapshots_overdue(snaps, rule(host="db2", paths=("/srv",)), NOW)
    assert missing.subject == "snapshots of host db2, paths /srv"
    assert "no snapshot at all" in missing.message
    [empty] = snapshots_overdue([], rule(), NOW)
    assert empty.subject == "the repository" and empty.code == OVERDUE


def test_check_reports_a_rolled_back_repository(tmp_path: Path) -> None:
    """A repository whose newest snapshot was deleted checks clean; with --max-age the
    older newest snapshot gives it away."""
    clock = FakeClock(NOW - 3 * DAY)
    repo = Repository.init(MemoryStorage(), b"pw", kdf=KdfParams(n=1 << 10), clock=clock)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    run_backup(repo, BackupOptions(paths=[str(src)], threads=1))
    clock.advance(3 * DAY - timedelta(hours=1))
    newest = run_backup(repo, BackupOptions(paths=[str(src)], threads=1)).snapshot
    opts = CheckOptions(max_age=rule())
    report = check_repository(repo, opts)
    assert report.ok and report.problems == []
    repo.delete_snapshot(newest.id)  # what a stolen client's delete does
    report = check_repository(repo, opts)
    assert report.ok  # nothing is damaged...
    [overdue] = report.warnings
    assert overdue.code == OVERDUE and "2 d 23 h old" in overdue.message  # ...but it is old
    assert check_repository(repo, replace(opts, max_age=None)).problems == []
