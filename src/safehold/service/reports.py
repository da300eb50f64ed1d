"""Each project's periodic report (staffeln's): made once its period has ended, sent by
e-mail or written to the log, marked in the catalog's ``reports`` table.

The rules (docs/reports.md):

- Periods are fixed boundaries of ``reports.period`` counted from Monday 1970-01-05 00:00
  UTC (so ``1d`` ends at midnight UTC and ``7d`` on Mondays). A report covers one whole
  period and its row is made only once that period has ended: never earlier.
- A cycle (:func:`report_cycle`, every :data:`CYCLE_SECONDS` in ``safehold serve``) makes
  the row of the newest ended period of every project, then sends every row not sent
  yet, oldest first. A send that fails counts an attempt and keeps its error; the next
  cycle tries again. A sent row is never sent again.
- One cycle at a time among all the processes sharing the catalog: a cycle holds a
  PostgreSQL advisory lock (:data:`REPORTS_LOCK`), and a process that cannot take it
  skips its cycle.

Sending goes through :func:`send_report`, the seam to point at the alerts' e-mail channel
when there is one; until then it uses a minimal SMTP sender of its own
(:func:`send_email`). With no receivers, the report goes to the log: one JSON line with
its summary and the HTML file's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from safehold.clock import SYSTEM_CLOCK, Clock
from safehold.config.reports import ReportsConfig, SmtpConfig
from safehold.errors import SafeholdError
from safehold.notify import DeliveryError, EmailChannel, Message
from safehold.service.coverage import verify_periods
from safehold.service.metrics_targets import rpo_targets
from safehold.service.plans import PlanSpec
from safehold.service.reports_data import ReportData, gather
from safehold.service.reports_render import render_html
from safehold.service.repository_bytes import plan_repositories

if TYPE_CHECKING:
    from safehold.service.serve import Service

__all__ = [
    "ANCHOR",
    "CYCLE_SECONDS",
    "REPORTS_LOCK",
    "Outgoing",
    "ReportSendError",
    "Sent",
    "period_bounds",
    "report_cycle",
    "report_loop",
    "send_email",
    "send_report",
    "write_report",
]

log = logging.getLogger("safehold.reports")

ANCHOR = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday: weekly periods end on Mondays
CYCLE_SECONDS = 300.0  # a failed send waits this long for its next attempt
REPORTS_LOCK = 0x7265706F727473  # "reports" in ASCII
_MAX_ERROR = 2000


class ReportSendError(SafeholdError):
    """A report could not be sent (it stays unsent and is tried again next cycle)."""


@dataclass(frozen=True)
class Outgoing:
    """A report ready to go: its data, its HTML (also written to ``html_path``) and its
    receivers' addresses (none: the log)."""

    data: ReportData
    html: str
    html_path: Path
    receivers: tuple[str, ...]

    @property
    def subject(self) -> str:
        """The mail's subject: project, period, and what went wrong if anything did."""
        data = self.data
        days = f"{data.period_start:%Y-%m-%d} to {data.period_end:%Y-%m-%d}"
        trouble = []
        if data.failed:
            trouble.append(f"{data.failed} failed")
        if data.breaches:
            trouble.append(f"{len(data.breaches)} over RPO")
        return f"safehold report: {data.project}, {days}" + (
            f" ({', '.join(trouble)})" if trouble else ""
        )


@dataclass(frozen=True)
class Sent:
    """What a cycle did with one report."""

    project: str
    period_start: datetime
    sent: bool
    error: str | None = None


Sender = Callable[[Outgoing, ReportsConfig], None]


def send_report(report: Outgoing, config: ReportsConfig) -> None:
    """Send ``report`` to its receivers, or to the log when it has none. The one place
    that knows the channels (the alerts' e-mail channel takes over here when merged)."""
    if not report.receivers:
        log.info(
            "%s",
            json.dumps({"event": "report", **report.data.summary(),
                        "html": str(report.html_path)}, sort_keys=True),
        )  # fmt: skip
        return
    if config.smtp is None:
        raise ReportSendError(
            f"project {report.data.project!r} has e-mail receivers but no SMTP server is "
            "configured",
            hint="add reports.smtp: {host: ..., port: ...} to the configuration file",
        )
    send_email(config.smtp, report)


def send_email(smtp: SmtpConfig, report: Outgoing) -> None:
    """Mail ``report`` (HTML, with its summary as the text part) through ``smtp``, by the
    alerts' e-mail channel (safehold.notify)."""
    channel = EmailChannel(
        host=smtp.host, port=smtp.port, sender=smtp.sender, to=list(report.receivers),
        tls="starttls" if smtp.starttls else "none", username=smtp.username,
        password=smtp.password.get_secret_value() if smtp.password else None,
        ca_file=smtp.ca_file, timeout=smtp.timeout,
    )  # fmt: skip
    text = json.dumps(report.data.summary(), indent=2) + "\n"
    try:
        channel.send(Message(subject=report.subject, text=text, html=report.html))
    except DeliveryError as exc:  # its message names the server; the password is masked
        raise ReportSendError(
            f"project {report.data.project!r}'s report: {exc.message}",
            hint="check reports.smtp (host, port, starttls, username); the report is "
            "tried again at the next cycle",
        ) from None


def period_bounds(now: datetime, period: float) -> tuple[datetime, datetime]:
    """The newest period that has ended at ``now``: ``(start, end)``, ``end <= now``."""
    whole = int((now - ANCHOR).total_seconds() // period)
    end = ANCHOR + timedelta(seconds=whole * period)
    return end - timedelta(seconds=period), end


def write_report(data: ReportData, folder: Path) -> tuple[str, Path]:
    """Render ``data`` and write it to ``folder``; the HTML and the file's path."""
    html = render_html(data)
    folder.mkdir(parents=True, exist_ok=True)
    start = data.period_start.astimezone(UTC)
    path = folder / f"{data.project}-{start:%Y%m%dT%H%MZ}.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a file
    return html, path


def report_cycle(
    engine: Engine,
    config: ReportsConfig,
    folder: Path,
    *,
    clock: Clock = SYSTEM_CLOCK,
    sender: Sender = send_report,
    specs: Iterable[PlanSpec] = (),
) -> list[Sent] | None:
    """One cycle: the newest ended period's rows made, every unsent row sent; what was
    tried (None: another process holds the cycle's lock). ``specs``: the service's
    plans, for their RPO targets, the repositories they verify and those they write to."""
    with engine.connect() as lock:
        got = lock.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": REPORTS_LOCK})
        lock.commit()
        if not got.scalar_one():
            return None
        try:
            return _cycle(engine, config, folder, clock, sender, list(specs))
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": REPORTS_LOCK})
            lock.commit()


def _cycle(
    engine: Engine,
    config: ReportsConfig,
    folder: Path,
    clock: Clock,
    sender: Sender,
    specs: list[PlanSpec],
) -> list[Sent]:
    targets = rpo_targets(specs)
    now = clock.now()
    start, end = period_bounds(now, config.period)
    with engine.begin() as db:
        projects = set(config.projects)
        if config.all_projects:
            projects |= set(db.execute(text("SELECT DISTINCT project FROM plans")).scalars())
        for project in sorted(projects):
            db.execute(
                text(
                    "INSERT INTO reports (project, period_start, period_end) "
                    "VALUES (:p, :s, :e) ON CONFLICT (project, period_start) DO NOTHING"
                ),
                {"p": project, "s": start, "e": end},
            )
        pending = db.execute(
            text(
                "SELECT id, project, period_start, period_end FROM reports "
                "WHERE sent_at IS NULL AND period_end <= :now AND project = ANY(:projects) "
                "ORDER BY period_start, project"
            ),
            {"now": now, "projects": sorted(projects)},
        ).all()
    done = []
    for row in pending:
        receivers = config.projects.get(row.project)
        error: str | None = None
        try:
            data = gather(engine, row.project, row.period_start, row.period_end, now=now,
                          rpo_targets=targets,
                          verify_periods=verify_periods(specs, row.project),
                          repositories=plan_repositories(specs))  # fmt: skip
            html, path = write_report(data, folder)
            sender(Outgoing(data, html, path, tuple(receivers.email if receivers else ())),
                   config)  # fmt: skip
        except Exception as exc:  # any failure: kept, counted, tried again next cycle
            error = _describe(exc)
            log.warning("report of %s for %s not sent: %s", row.project,
                        row.period_start.isoformat(), error)  # fmt: skip
        with engine.begin() as db:
            db.execute(
                text(
                    "UPDATE reports SET attempts = attempts + 1, last_error = :err, "
                    "sent_at = CASE WHEN CAST(:err AS text) IS NULL THEN CAST(:now AS "
                    "timestamptz) END WHERE id = :id AND sent_at IS NULL"
                ),
                {"err": error, "now": now, "id": row.id},
            )
        done.append(Sent(row.project, row.period_start, error is None, error))
    return done


def _describe(exc: BaseException) -> str:
    # One line (the log's and the catalog's): "message (hint)".
    if isinstance(exc, SafeholdError):
        found = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    else:
        found = f"{type(exc).__name__}: {exc}"
    return found[:_MAX_ERROR]


def report_folder(config: ReportsConfig, state_dir: Path) -> Path:
    """Where the HTML files go: ``reports.folder``, else ``STATE_DIR/reports``."""
    return Path(config.folder) if config.folder else state_dir / "reports"


async def report_loop(service: Service, stop: asyncio.Event) -> None:
    """Run a cycle now and every :data:`CYCLE_SECONDS` until ``stop``, while the
    configuration has a ``reports:`` block (read again at each cycle: a reload applies)."""
    while not stop.is_set():
        config: ReportsConfig | None = service.reports_config
        if config is not None:
            try:
                await asyncio.to_thread(
                    report_cycle, service.engine, config,
                    report_folder(config, service.state_dir), clock=service.options.clock,
                    specs=service.specs.values(),
                )  # fmt: skip
            except Exception as exc:  # the database went away: the next cycle tries again
                log.warning("the report cycle failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=CYCLE_SECONDS)
