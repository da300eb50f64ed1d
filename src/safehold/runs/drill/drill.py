"""One drill: a sandbox made, a snapshot restored into it through the source, a check.

:func:`run_drill` runs three phases, each recorded with its state and times:

1. ``sandbox``: the scratch server, file or folder for the source's kind;
2. ``restore``: the source's own restore (``runs.run_source_restore``: its restore hooks,
   lock and time-out, the same path ``safehold restore --config`` takes) into the
   sandbox's target, then the sandbox made to serve it (Redis loads the RDB). This is the
   measured restore time, the drill's RTO;
3. ``check``: the configured check against the copy.

The sandbox is removed whatever happens. A failed restore or check makes the drill
``failed`` with its phase; with ``finish_chain`` the source's current chain is then
finished, so that its next backup starts a new chain with a full upload.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from safehold.clock import utcnow
from safehold.engine.tree_walk import walk
from safehold.errors import ExitCode, SafeholdError
from safehold.repository import tree as t
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.runs.drill.checks import DrillCheck, run_check
from safehold.runs.drill.sandbox import Sandbox, make_sandbox, remove_stale_sandboxes
from safehold.runs.events import LogEvent, LogSink, discard
from safehold.runs.job import SourceJob
from safehold.runs.source_run import run_source_restore
from safehold.sources.base import RestoreRequest, SnapshotFiles, Source, StreamContent, TreeContent

__all__ = ["DrillOutcome", "finish_current_chain", "run_drill"]

_DB_SUFFIXES = (".pgdump", ".sql")


@dataclass(kw_only=True)
class DrillOutcome:
    """What a drill did: the ``drills`` row's fields, and the run's phases."""

    plan: str
    source: str
    kind: str
    snapshot: str
    started: datetime
    finished: datetime | None = None
    restore_seconds: float | None = None
    rto_target_seconds: float | None = None
    bytes: int | None = None
    result: str = "running"  # passed | failed
    failed_phase: str | None = None  # sandbox | restore | check
    check_output: str = ""
    error: str = ""
    hint: str = ""
    finished_chain: str | None = None  # the chain finished after a failure
    phases: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether the restore and the check passed."""
        return self.result == "passed"

    @property
    def over_target(self) -> bool:
        """Whether the restore took longer than the RTO target."""
        return (
            self.rto_target_seconds is not None
            and self.restore_seconds is not None
            and self.restore_seconds > self.rto_target_seconds
        )

    @property
    def exit_code(self) -> int:
        """0 when proven; 4 (the backup could not be proven) when the restore or the check
        failed; 1 when the sandbox could not be made (nothing was proven either way)."""
        if self.passed:
            return ExitCode.OK
        return ExitCode.FAILURE if self.failed_phase == "sandbox" else ExitCode.INTEGRITY

    def to_json(self) -> dict[str, Any]:
        """The outcome as ``drill --json`` prints it (and the service reads it)."""
        return {
            "operation": "drill",
            "outcome": "success" if self.passed else "failed",
            "plan": self.plan,
            "source": self.source,
            "source_kind": self.kind,
            "snapshot": self.snapshot or None,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "restore_seconds": self.restore_seconds,
            "rto_target_seconds": self.rto_target_seconds,
            "over_target": self.over_target,
            "bytes": self.bytes,
            "result": self.result,
            "failed_phase": self.failed_phase,
            "check_output": self.check_output,
            "error": self.error or None,
            "hint": self.hint or None,
            "finished_chain": self.finished_chain,
            "phases": self.phases,
            "exit_code": self.exit_code,
        }


class _SandboxSource:
    """The job's own source, restoring with the sandbox's options added (its generated
    password, no check for a server at the source's address): the source's restore
    itself is unchanged."""

    def __init__(self, inner: Source, options: dict[str, object]) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.options = options

    def content(self) -> TreeContent | StreamContent:
        """The inner source's (never called by a restore)."""
        return self.inner.content()

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """The inner source's restore, with the sandbox's options."""
        merged = {**request.options, **self.options}
        self.inner.restore(files, dataclasses.replace(request, options=merged))


def _size_and_databases(repo: Repository, snap: Snapshot) -> tuple[int, list[str]]:
    """The snapshot's bytes (its files' sizes) and the databases its dumps hold."""
    from urllib.parse import unquote

    size = 0
    dbs: list[str] = []
    for path, node in walk(repo, snap.tree):
        if node.type != t.FILE:
            continue
        size += node.size
        name = path.lstrip("/")
        if "/" not in name and name != "globals.sql" and name.endswith(_DB_SUFFIXES):
            dbs.append(unquote(name.rsplit(".", 1)[0]))
    return size, dbs


class _Phases:
    def __init__(self, outcome: DrillOutcome, log: Callable[..., None]) -> None:
        self.outcome = outcome
        self.log = log
        self.current: dict[str, Any] | None = None

    def begin(self, name: str) -> None:
        self.current = {"phase": name, "state": "running", "started_at": utcnow().isoformat()}
        self.outcome.phases.append(self.current)
        self.log("info", f"drill.{name}.started")

    def end(self, state: str, output: str = "") -> None:
        assert self.current is not None
        self.current.update(state=state, ended_at=utcnow().isoformat())
        if output:
            self.current["output"] = output
        self.log("info" if state == "succeeded" else "error", f"drill.{self.current['phase']}."
                 + ("finished" if state == "succeeded" else "failed"))  # fmt: skip


def run_drill(
    repo: Repository,
    job: SourceJob,
    snap: Snapshot,
    check: DrillCheck,
    *,
    state_dir: Path,
    rto_target: float | None = None,
    finish_chain: bool = False,
    sink: LogSink = discard,
    sandbox_factory: Callable[[str], Sandbox] = make_sandbox,
) -> DrillOutcome:
    """Drill ``snap`` of ``job``'s source (see the module docstring). Errors of a phase
    end the drill ``failed`` with that phase; only an interrupt (Ctrl-C, the service's
    stop) propagates, after the sandbox is removed."""
    outcome = DrillOutcome(
        plan=job.plan or job.name,
        source=job.name,
        kind=job.kind,
        snapshot=snap.id,
        started=utcnow(),
        rto_target_seconds=rto_target,
    )

    def log(level: str, event: str, **fields: Any) -> None:
        sink(LogEvent(utcnow(), level, event, {"source": job.name, "snapshot": snap.id, **fields}))

    phases = _Phases(outcome, log)
    log("info", "drill.started", kind=job.kind, rto_target=rto_target)
    for stale in remove_stale_sandboxes():
        log("warning", "drill.stale_sandbox_removed", path=stale)
    try:
        phases.begin("sandbox")
        try:
            sandbox = sandbox_factory(job.kind)
            sandbox.__enter__()
        except SafeholdError as exc:
            _fail(outcome, "sandbox", exc.message, exc.hint or "")
            phases.end("failed", exc.message)
            return outcome
        try:
            phases.end("succeeded")
            databases = _restore(repo, job, snap, sandbox, outcome, phases, state_dir, sink)
            if databases is not None:
                phases.begin("check")
                result = run_check(check, sandbox, repo=repo, snap=snap, databases=databases)
                outcome.check_output = result.output
                if result.passed:
                    phases.end("succeeded", result.output)
                    outcome.result = "passed"
                else:
                    phases.end("failed", result.output)
                    last = result.output.strip().splitlines()[-1:] or ["the check failed"]
                    _fail(outcome, "check", f"the drill's check failed: {last[0]}", "")
        finally:
            sandbox.close()
    finally:
        outcome.finished = utcnow()
    if not outcome.passed and outcome.failed_phase != "sandbox" and finish_chain:
        outcome.finished_chain = finish_current_chain(repo, job.name, snap)
        if outcome.finished_chain:
            log("warning", "drill.chain_finished", chain=outcome.finished_chain)
    log(
        "info" if outcome.passed else "error",
        "drill.finished",
        result=outcome.result,
        restore_seconds=outcome.restore_seconds,
        over_target=outcome.over_target,
    )
    return outcome


def _restore(
    repo: Repository,
    job: SourceJob,
    snap: Snapshot,
    sandbox: Sandbox,
    outcome: DrillOutcome,
    phases: _Phases,
    state_dir: Path,
    sink: LogSink,
) -> list[str] | None:
    """The restore phase; the databases restored (None: it failed)."""
    phases.begin("restore")
    drill_job = dataclasses.replace(job, source=_SandboxSource(job.source, sandbox.options))
    started = time.monotonic()
    try:
        # Damage in the snapshot's trees fails the restore phase here, as it would the restore.
        repo.load_index()
        outcome.bytes, databases = _size_and_databases(repo, snap)
        record = run_source_restore(
            repo,
            drill_job,
            snap,
            state_dir=state_dir,
            target=sandbox.target,
            replace=True,  # the sandbox is the drill's own: nothing there to keep
            sink=sink,
        )
        if record.outcome != "success":
            message = record.error or f"the restore ended {record.outcome}"
            if record.warnings:
                message += ": " + "; ".join(record.warnings[:5])
            _fail(outcome, "restore", message, record.hint)
            phases.end("failed", message)
            return None
        sandbox.ready()
    except SafeholdError as exc:
        _fail(outcome, "restore", exc.message, exc.hint or "")
        phases.end("failed", exc.message)
        return None
    outcome.restore_seconds = round(time.monotonic() - started, 3)
    phases.end("succeeded")
    return databases


def _fail(outcome: DrillOutcome, phase: str, error: str, hint: str) -> None:
    outcome.result = "failed"
    outcome.failed_phase = phase
    outcome.error = error
    outcome.hint = hint


def finish_current_chain(repo: Repository, source: str, drilled: Snapshot) -> str | None:
    """Finish the chain the source's next backup would join (its newest snapshot's), so
    that the next backup is a full one; its id, or None when there is none to finish (an
    isolated snapshot, or already finished)."""
    mine = [s for s in repo.list_snapshots() if s.source_name == source] or [drilled]
    newest = max(mine, key=lambda s: s.time)
    if newest.isolated or newest.chain in repo.finished_chains():
        return None
    repo.finish_chain(newest.chain)
    return str(newest.chain)
