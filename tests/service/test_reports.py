"""Project reports on a real catalog: the HTML's content (parsed), the period rule and the
retry of a failed send under a fake clock, the mail through a real SMTP server (aiosmtpd on
127.0.0.1), the log when no one receives it, one cycle at a time, and ``safehold report``."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, text

from safehold.clock import FakeClock
from safehold.config import load_config
from safehold.config.reports import ProjectReceivers, ReportsConfig, SmtpConfig
from safehold.service.cluster import Cluster
from safehold.service.database import prepare
from safehold.service.plans import plans_from_config, sync_plans
from safehold.service.reports import (
    REPORTS_LOCK,
    Outgoing,
    ReportSendError,
    period_bounds,
    report_cycle,
    send_email,
    send_report,
)
from safehold.service.reports_data import gather
from safehold.service.reports_render import GREEN, RED, render_html
from tests.conftest import CliRunner
from tests.servers.private_cluster import database_url, fresh_database

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("service_database")]

# A Monday morning: the daily period that ended is Sunday, the weekly one last week.
MONDAY = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
DAY = 86400


@dataclass
class Catalog:
    engine: Engine
    url: str
    config: Path
    folder: Path


@pytest.fixture
def catalog(
    private_cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Catalog]:
    name = "reports_" + request.node.name[:40].lower()
    engine = fresh_database(private_cluster, name)
    prepare(engine)
    (tmp_path / "data").mkdir()
    config = tmp_path / "safehold.yaml"
    config.write_text(
        f"repository: {{location: {tmp_path / 'repo'}, password_env: SH_TEST_PW}}\n"
        "reports: {period: 1d}\n"
        "sources:\n"
        + "".join(
            f"  {plan}:\n    type: directory\n    paths: [{tmp_path / 'data'}]\n"
            f'    schedule: "@daily"\n    project: {project}\n'
            for plan, project in (("db", "shop"), ("files", "shop"), ("wiki", "docs"))
        )
    )
    sync_plans(engine, plans_from_config(load_config(str(config))).values())
    url = database_url(private_cluster, name).render_as_string(hide_password=False)
    try:
        yield Catalog(engine, url.replace("postgresql+psycopg://", "postgresql://"), config,
                      tmp_path / "reports")  # fmt: skip
    finally:
        engine.dispose()


def add_run(catalog: Catalog, plan: str, state: str, at: datetime, *, seconds: float = 30,
            added: int | None = None, error: str | None = None,
            point: bool = False, repository_bytes: int | None = None) -> None:  # fmt: skip
    run_id = uuid.uuid4()
    with catalog.engine.begin() as db:
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, queued_at, started_at, "
                "ended_at, bytes_read, bytes_added, error, repository_bytes) SELECT :id, id, "
                "'backup', 'schedule', :state, :at, :at, :end, :added, :added, :error, "
                ":repo_bytes FROM plans WHERE name = :plan"
            ),
            {"id": run_id, "state": state, "at": at, "end": at + timedelta(seconds=seconds),
             "added": added, "error": error, "plan": plan, "repo_bytes": repository_bytes},
        )  # fmt: skip
        if point:
            db.execute(
                text(
                    "INSERT INTO restore_points (plan_id, project, snapshot_id, run_id, "
                    "taken_at, bytes_added) SELECT plan_id, 'shop', :snap, id, :at, :added "
                    "FROM runs WHERE id = :id"
                ),
                {"snap": uuid.uuid4().hex * 2, "id": run_id, "at": at, "added": added},
            )


class Tables(HTMLParser):
    """The report's tables: id -> rows -> cells (text, and each row's attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.row_attrs: dict[str, list[dict[str, str]]] = {}
        self.cell_styles: dict[str, list[list[str]]] = {}
        self.headings: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "table":
            self._table = found.get("id", "")
            self.tables[self._table], self.row_attrs[self._table] = [], []
            self.cell_styles[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.row_attrs[self._table].append(found)
            self.cell_styles[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
            self.cell_styles[self._table][-1].append(found.get("style", ""))
        elif tag == "h2":
            self._in_h2 = True
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_h2:
            self.headings[-1] += data


def parse(html: str) -> Tables:
    found = Tables()
    found.feed(html)
    return found


def test_the_html_says_what_happened(catalog: Catalog) -> None:
    start, end = period_bounds(MONDAY, DAY)
    add_run(catalog, "db", "failed", start + timedelta(hours=1), error="pg_dump: <refused>")
    add_run(catalog, "db", "succeeded", start + timedelta(hours=2), added=5 * 1024**2, point=True)
    add_run(catalog, "files", "succeeded", start - timedelta(days=3), added=1024, point=True)
    add_run(catalog, "files", "succeeded", end + timedelta(minutes=5), added=7)  # after: not in
    with catalog.engine.begin() as db:
        db.execute(text("UPDATE plans SET settings = settings || '{\"rpo_target\": 86400}'"))
    data = gather(catalog.engine, "shop", start, end, now=end)
    html = render_html(data)
    tables = parse(html)
    assert tables.headings == ["Summary", "Plans: RPO and storage", "Runs"]  # no drill ran
    summary = dict(row for row in tables.tables["summary"])  # type: ignore[misc]
    assert summary["Runs succeeded"] == "1" and summary["Runs failed"] == "1"
    assert summary["Plans over their RPO target"] == "1"
    assert summary["Usage"] == "5.0 MiB" and summary["Growth in the period"] == "5.0 MiB"
    assert summary["Quota"] == "not known"
    plans = {row[0]: row for row in tables.tables["plans"][1:]}
    assert set(plans) == {"db", "files"}  # the other project's plan is not shown
    assert plans["db"][6] == "ok" and plans["files"][6] == "breach"
    rpo_colour = {attrs["data-plan"]: styles[6] for attrs, styles in
                  zip(tables.row_attrs["plans"][1:], tables.cell_styles["plans"][1:],
                      strict=True)}  # fmt: skip
    assert RED in rpo_colour["files"] and GREEN in rpo_colour["db"]
    runs = tables.tables["runs"][1:]
    assert [r[3] for r in runs] == ["failed", "succeeded"]  # failures first
    assert runs[0][5] == "pg_dump: <refused>"  # escaped in the HTML, text again when parsed
    assert "&lt;refused&gt;" in html
    classes = [attrs.get("class") for attrs in tables.row_attrs["runs"][1:]]
    assert classes == ["run failed", "run succeeded"]
    assert data.summary()["rpo_breached"] == ["files"]


def test_drills_of_the_period_are_shown(catalog: Catalog) -> None:
    with catalog.engine.begin() as db:
        db.execute(text(
            "INSERT INTO drills (project, plan, started_at, finished_at, restore_seconds, "
            "rto_target_seconds, result) VALUES ('shop', 'db', :at, :at, 1200, 900, 'passed')"
        ), {"at": MONDAY - timedelta(hours=20)})  # fmt: skip
    start, end = period_bounds(MONDAY, DAY)
    data = gather(catalog.engine, "shop", start, end, now=MONDAY)
    tables = parse(render_html(data))
    assert "Drills" in tables.headings
    drill = tables.tables["drills"][1]
    assert drill[1:5] == ["db", "passed", "20 min", "15 min"]
    assert RED in tables.cell_styles["drills"][1][3]  # 20 min is over the 15 min target
    assert data.summary()["drills_passed"] == 1


def test_never_before_its_period_and_a_failed_send_is_tried_next_cycle(
    catalog: Catalog,
) -> None:
    clock = FakeClock(MONDAY)
    config = ReportsConfig(period=DAY, projects={"shop": ProjectReceivers(email=["a@x.test"])})
    sent: list[Outgoing] = []
    failing = [True]

    def sender(report: Outgoing, _: ReportsConfig) -> None:
        if failing[0] and report.data.project == "shop":
            raise ReportSendError("the mail server said no", hint="try later")
        sent.append(report)

    first = report_cycle(catalog.engine, config, catalog.folder, clock=clock, sender=sender)
    assert first is not None
    assert {(s.project, s.sent) for s in first} == {("shop", False), ("docs", True)}
    sunday = datetime(2026, 3, 1, tzinfo=UTC)
    assert [s.period_start for s in first] == [sunday, sunday]
    assert [r.data.project for r in sent] == ["docs"]
    row = _row(catalog, "shop")
    assert row["attempts"] == 1 and row["sent_at"] is None
    assert row["last_error"] == "the mail server said no (try later)"
    # Hours later, the same day: the failed one is tried again, nothing new is made.
    failing[0] = False
    clock.advance(timedelta(hours=5))
    second = report_cycle(catalog.engine, config, catalog.folder, clock=clock, sender=sender)
    assert second is not None and [(s.project, s.sent) for s in second] == [("shop", True)]
    row = _row(catalog, "shop")
    assert row["attempts"] == 2 and row["sent_at"] == clock.now()
    assert (catalog.folder / "shop-20260301T0000Z.html").exists()
    # Still before midnight: today's period has not ended, so no report goes out.
    clock.advance(timedelta(hours=9))
    assert report_cycle(catalog.engine, config, catalog.folder, clock=clock, sender=sender) == []
    clock.advance(timedelta(hours=1))  # Tuesday 00:30: Monday's reports
    third = report_cycle(catalog.engine, config, catalog.folder, clock=clock, sender=sender)
    assert third is not None
    assert {(s.project, s.period_start.day, s.sent) for s in third} == {
        ("shop", 2, True), ("docs", 2, True)
    }  # fmt: skip
    assert len(sent) == 4  # each report went out once
    with catalog.engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM reports WHERE sent_at IS NULL")).scalar() == 0


def _row(catalog: Catalog, project: str) -> dict[str, Any]:
    with catalog.engine.connect() as db:
        row = db.execute(
            text("SELECT * FROM reports WHERE project = :p ORDER BY period_start DESC LIMIT 1"),
            {"p": project},
        ).one()
    return dict(row._mapping)


def test_one_cycle_at_a_time(catalog: Catalog) -> None:
    with catalog.engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": REPORTS_LOCK})
        other.commit()
        config = ReportsConfig(period=DAY)
        assert report_cycle(catalog.engine, config, catalog.folder, clock=FakeClock(MONDAY)) is None
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": REPORTS_LOCK})
        other.commit()
    done = report_cycle(catalog.engine, ReportsConfig(period=DAY), catalog.folder,
                        clock=FakeClock(MONDAY))  # fmt: skip
    assert done is not None and len(done) == 2


def test_no_receivers_means_one_json_log_line(
    catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    add_run(catalog, "wiki", "failed", MONDAY - timedelta(hours=12), error="gone")
    caplog.set_level(logging.INFO, logger="safehold.reports")
    done = report_cycle(catalog.engine, ReportsConfig(period=DAY, all_projects=True),
                        catalog.folder, clock=FakeClock(MONDAY))  # fmt: skip
    assert done is not None and all(s.sent for s in done)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "safehold.reports"]
    docs = next(line for line in lines if line["project"] == "docs")
    assert docs["event"] == "report" and docs["runs_failed"] == 1
    assert Path(docs["html"]).read_text().count('class="run failed"') == 1


@dataclass
class Inbox:
    """What an SMTP server on 127.0.0.1 received."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        message["X-Rcpt"] = ",".join(envelope.rcpt_tos)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    found = Inbox(free_port())
    controller = Controller(found, hostname="127.0.0.1", port=found.port)
    controller.start()
    try:
        yield found
    finally:
        controller.stop()


def test_mailed_through_smtp_after_the_server_was_away(catalog: Catalog, inbox: Inbox) -> None:
    add_run(catalog, "db", "succeeded", MONDAY - timedelta(hours=20), added=2048, point=True)
    add_run(catalog, "files", "timed_out", MONDAY - timedelta(hours=19), error="took too long")
    away = SmtpConfig(host="127.0.0.1", port=free_port(), sender="safehold@x.test", timeout=5)
    receivers = {"shop": ProjectReceivers(email=["ops@x.test", "dba@x.test"])}
    clock = FakeClock(MONDAY)
    config = ReportsConfig(period=DAY, smtp=away, projects=receivers, all_projects=False)
    failed = report_cycle(catalog.engine, config, catalog.folder, clock=clock)
    assert failed is not None and [s.sent for s in failed] == [False]
    assert failed[0].error and f"127.0.0.1:{away.port}" in failed[0].error
    assert "reports.smtp" in failed[0].error  # the hint names what to check
    clock.advance(300)
    here = SmtpConfig(host="127.0.0.1", port=inbox.port, sender="safehold@x.test", timeout=5)
    config = ReportsConfig(period=DAY, smtp=here, projects=receivers, all_projects=False)
    done = report_cycle(catalog.engine, config, catalog.folder, clock=clock)
    assert done is not None and [s.sent for s in done] == [True]
    assert len(inbox.messages) == 1
    mail = inbox.messages[0]
    assert mail["X-Rcpt"] == "ops@x.test,dba@x.test"
    assert mail["Subject"] == "safehold report: shop, 2026-03-01 to 2026-03-02 (1 failed)"
    html_part = mail.get_body(("html",))
    assert html_part is not None
    tables = parse(html_part.get_content())
    assert [(r[1], r[3], r[5]) for r in tables.tables["runs"][1:]] == [
        ("files", "timed_out", "took too long"), ("db", "succeeded", "")
    ]  # fmt: skip
    text_part = mail.get_body(("plain",))
    assert text_part is not None and json.loads(text_part.get_content())["runs_failed"] == 1
    # Sent is sent: another cycle the same day mails nothing.
    assert report_cycle(catalog.engine, config, catalog.folder, clock=clock) == []
    assert len(inbox.messages) == 1


def test_receivers_without_smtp_is_an_error_that_says_so(catalog: Catalog, tmp_path: Path) -> None:
    start, end = period_bounds(MONDAY, DAY)
    data = gather(catalog.engine, "shop", start, end, now=MONDAY)
    outgoing = Outgoing(data, "<html></html>", tmp_path / "r.html", ("ops@x.test",))
    with pytest.raises(ReportSendError, match="no SMTP server") as caught:
        send_report(outgoing, ReportsConfig())
    assert caught.value.hint and "reports.smtp" in caught.value.hint


def test_the_command_writes_one_now(catalog: Catalog, cli: CliRunner, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    add_run(catalog, "db", "succeeded", now - timedelta(hours=2), added=10, point=True)
    base = ["--config", str(catalog.config), "--database", catalog.url,
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    html = tmp_path / "out.html"
    ok = cli("--json", "report", "--project", "shop", "--html", str(html), *base)
    assert ok.code == 0, ok.output
    summary = json.loads(ok.stdout)
    assert summary["runs_succeeded"] == 1 and summary["html"] == str(html)
    assert parse(html.read_text()).tables["plans"][1][0] == "db"
    add_run(catalog, "files", "failed", now - timedelta(hours=1), error="no")
    failed = cli("report", "--project", "shop", "--since", "1d", *base)
    assert failed.code == 1, failed.output
    assert "1 succeeded, 1 failed" in failed.stdout
    unknown = cli("report", "--project", "nope", *base)
    assert unknown.code == 2 and "no plans" in unknown.stderr
    bad = cli("report", "--project", "shop", "--since", "soon", *base)
    assert bad.code == 2 and "not a report period" in bad.stderr
    with catalog.engine.begin() as db:  # the on-demand report marks nothing
        assert db.execute(text("SELECT count(*) FROM reports")).scalar() == 0


def test_periods_end_on_fixed_boundaries() -> None:
    assert period_bounds(MONDAY, DAY) == (datetime(2026, 3, 1, tzinfo=UTC),
                                          datetime(2026, 3, 2, tzinfo=UTC))  # fmt: skip
    week = period_bounds(MONDAY, 7 * DAY)
    assert week == (datetime(2026, 2, 23, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    assert week[1].weekday() == 0  # weeks end on Mondays
    # At the boundary itself the period has ended; a microsecond before, not yet.
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    assert period_bounds(midnight, DAY)[1] == midnight
    assert period_bounds(midnight - timedelta(microseconds=1), DAY)[1] == midnight - timedelta(1)


def test_the_reports_block_in_a_file(tmp_path: Path) -> None:
    from safehold.errors import ConfigError

    path = tmp_path / "safehold.yaml"
    path.write_text(
        "reports:\n  period: 1w\n  smtp: {host: 127.0.0.1, password: s3cret}\n"
        "  projects: {shop: {email: [ops@x.test]}}\n"
    )
    found = load_config(str(path)).reports
    assert found is not None and found.period == 7 * DAY
    assert found.projects["shop"].email == ["ops@x.test"]
    assert "s3cret" not in repr(found)
    path.write_text("reports: {period: 3 days, emails: []}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert "reports.period" in str(caught.value) and "not a report period" in str(caught.value)
    assert "reports.emails" in str(caught.value)


def test_coverage_is_shown_for_the_verified_repositories(catalog: Catalog) -> None:
    """The coverage section reads the verification rotation (verify_packs) of the
    repositories it is given: none given, no section."""
    start, end = period_bounds(MONDAY, DAY)
    assert (
        "Verification coverage"
        not in parse(render_html(gather(catalog.engine, "shop", start, end, now=MONDAY))).headings
    )
    recent, old = MONDAY - timedelta(days=1), MONDAY - timedelta(days=40)
    packs = [("s3:bucket/shop", "p1", 700, recent), ("s3:bucket/shop", "p2", 100, None),
             ("s3:bucket/shop", "p3", 0, old), ("/srv/repo", "p4", 50, recent)]  # fmt: skip
    with catalog.engine.begin() as db:
        for repo, pack, size, read in packs:
            db.execute(
                text("INSERT INTO verify_packs (repository, pack_id, size, first_seen, "
                     "last_read, last_result) VALUES (:r, :p, :s, :f, :l, :res)"),
                {"r": repo, "p": pack, "s": size, "f": old, "l": read,
                 "res": "ok" if read else None},
            )  # fmt: skip
    periods = {"s3:bucket/shop": "30d", "/srv/repo": "30d"}
    data = gather(catalog.engine, "shop", start, end, now=MONDAY, verify_periods=periods)
    tables = parse(render_html(data))
    assert tables.tables["coverage"][1:] == [["/srv/repo", "100.0 %"], ["s3:bucket/shop", "87.5 %"]]
    assert (
        GREEN in tables.cell_styles["coverage"][1][1]
        and RED in tables.cell_styles["coverage"][2][1]
    )
    assert data.summary()["coverage"] == {"s3:bucket/shop": 0.875, "/srv/repo": 1.0}


def test_usage_is_the_repositorys_stored_bytes_where_known(
    catalog: Catalog, cli: CliRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The usage is the stored size of the repository the project's plans write to: the
    newest succeeded backup's figure, whichever project's plan made it, or the
    verification's; before any is known, the new data of the kept restore points."""
    from safehold.service.repository_bytes import plan_repositories

    specs = list(plans_from_config(load_config(str(catalog.config))).values())
    repositories = plan_repositories(specs)
    repo = str(catalog.config.parent / "repo")
    assert repositories["shop/db"] == repositories["docs/wiki"] == repo
    start, end = period_bounds(MONDAY, DAY)

    def report() -> Any:
        return gather(catalog.engine, "shop", start, end, now=MONDAY, repositories=repositories)

    add_run(catalog, "db", "succeeded", start - timedelta(days=2), added=2 * 1024**2,
            point=True)  # fmt: skip
    before = report()
    assert before.stored_bytes == 2 * 1024**2 and "repository_bytes" not in before.summary()
    add_run(catalog, "db", "succeeded", start + timedelta(hours=1), added=1024**2, point=True,
            repository_bytes=3 * 1024**2)  # fmt: skip
    # The other project's later backup into the same repository is its newest size.
    add_run(catalog, "wiki", "succeeded", start + timedelta(hours=2), repository_bytes=9 * 1024**2)
    add_run(catalog, "files", "failed", start + timedelta(hours=3), error="no")
    data = report()
    assert data.stored_bytes == 9 * 1024**2
    assert data.summary()["stored_bytes"] == 9 * 1024**2
    assert data.summary()["repository_bytes"] == {repo: 9 * 1024**2}
    summary = dict(row for row in parse(render_html(data)).tables["summary"])  # type: ignore[misc]
    assert summary["Usage"] == "9.0 MiB"
    # The plans' own share (new data of their kept points) is still theirs.
    plans = {p.name: p.stored_bytes for p in data.plans}
    assert plans == {"db": 3 * 1024**2, "files": 0}
    # Without the plans' repositories (an older caller): the restore points' new data.
    assert gather(catalog.engine, "shop", start, end, now=MONDAY).stored_bytes == 3 * 1024**2
    # A verification that listed the packs wins over the backups' figure.
    with catalog.engine.begin() as db:
        db.execute(text("INSERT INTO verify_packs (repository, pack_id, size, first_seen) "
                        "VALUES (:r, 'p1', 4096, :f)"), {"r": repo, "f": start})  # fmt: skip
    verified = gather(catalog.engine, "shop", start, end, now=MONDAY, repositories=repositories,
                      verify_periods={repo: "30d"})  # fmt: skip
    assert verified.stored_bytes == 4096 and verified.repositories is not None
    assert [(r.repository, r.source) for r in verified.repositories] == [(repo, "verification")]
    # The service's cycle and the command pass the plans' repositories.
    with catalog.engine.begin() as db:
        db.execute(text("DELETE FROM verify_packs"))
    caplog.set_level(logging.INFO, logger="safehold.reports")
    report_cycle(catalog.engine, ReportsConfig(period=DAY, all_projects=True), catalog.folder,
                 clock=FakeClock(MONDAY), specs=specs)  # fmt: skip
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "safehold.reports"]
    assert next(line for line in lines if line["project"] == "shop")["stored_bytes"] == 9 * 1024**2
    base = ["--config", str(catalog.config), "--database", catalog.url,
            "--state-dir", str(tmp_path / "state")]  # fmt: skip
    made = cli("--json", "report", "--project", "docs", "--html", str(tmp_path / "d.html"), *base)
    assert made.code == 0, made.output
    assert json.loads(made.stdout)["repository_bytes"] == {repo: 9 * 1024**2}


def test_starttls_and_login(catalog: Catalog, tmp_path: Path) -> None:
    """STARTTLS (the certificate verified against its CA file) and a login; a wrong
    password is an error that does not show it."""
    import ssl
    import subprocess

    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
         "-out", str(cert)], capture_output=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:  # fmt: skip
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"reporter",
            b"right-pass",
        )
        if ok:
            return AuthResult(success=True)
        # aiosmtpd sends nothing for a bare failure: the reply must be given.
        return AuthResult(success=False, handled=False,
                          message="535 5.7.8 Authentication credentials invalid")  # fmt: skip

    inbox = Inbox(free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port, tls_context=context,
                            require_starttls=True, auth_required=True,
                            authenticator=authenticator)  # fmt: skip
    controller.start()
    try:
        add_run(catalog, "db", "succeeded", MONDAY - timedelta(hours=3), added=1, point=True)
        start, end = period_bounds(MONDAY, DAY)
        data = gather(catalog.engine, "shop", start, end, now=MONDAY)
        outgoing = Outgoing(data, render_html(data), tmp_path / "r.html", ("ops@x.test",))

        def smtp(password: str) -> SmtpConfig:
            return SmtpConfig(host="127.0.0.1", port=inbox.port, starttls=True,
                              username="reporter", password=password,  # type: ignore[arg-type]
                              ca_file=str(cert), timeout=10)  # fmt: skip

        with pytest.raises(ReportSendError) as caught:
            send_email(smtp("wrong-pass"), outgoing)
        assert "wrong-pass" not in str(caught.value) and "535" in str(caught.value)
        assert inbox.messages == []
        send_email(smtp("right-pass"), outgoing)
        assert len(inbox.messages) == 1
        assert inbox.messages[0]["Subject"].startswith("safehold report: shop")
    finally:
        controller.stop()
