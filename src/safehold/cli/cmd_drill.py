"""``safehold drill --config FILE PLAN``: prove a plan's backups restore, now.

The drill restores a snapshot of the plan's source through the source's own restore
path and hooks into a sandbox (runs/drill), checks the copy, prints the measured
restore time against ``rto_target`` and records the drill in the service's catalog
(a run of kind ``drill`` and a ``drills`` row), the database the file names as
``safehold plans`` and ``runs`` reach it.

Exit codes: 0 when the restore and the check passed; 4 when the drill ran and the
backup was not proven (the restore or the check failed: the drill is recorded failed
with its phase); any other code for an error that kept the drill from running (a
sandbox that could not be made: 1; a wrong file or plan: 2; the repository: 5, 10,
12...).
"""

from __future__ import annotations

import argparse
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments
from safehold.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from safehold.config import Config
    from safehold.config.drills import DrillConfig
    from safehold.repository.repository import Repository
    from safehold.repository.snapshot import Snapshot
    from safehold.runs import LogSink
    from safehold.runs.drill import DrillCheck, DrillOutcome


def register(sub: Any) -> None:
    """Add ``drill`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "drill",
        help="restore a plan's snapshot into a sandbox and check it, now",
        description="Restore a snapshot of PLAN's source through its own restore path and "
        "hooks into a sandbox (a scratch server, file or folder, removed afterwards), run "
        "the drill's check against it, and print the restore time against the drill's "
        "rto_target. Exit 0 when the restore and the check passed, 4 when they did not "
        "(recorded as a failed drill), another code when the drill could not run.",
    )
    p.add_argument("plan", metavar="PLAN", help="the source (NAME or PROJECT/NAME) with a drill:")
    p.add_argument(
        "--snapshot",
        metavar="ID",
        help="the snapshot to drill (an id prefix; default: the drill's target, latest or "
        "rotating)",
    )
    p.add_argument(
        "--no-record",
        action="store_true",
        help="do not record the drill in the service's catalog (no database is opened)",
    )
    # Set by the service when a worker runs the drill's job: the worker records it.
    p.add_argument("--run-id", metavar="UUID", help=argparse.SUPPRESS)
    add_service_arguments(p)
    p.set_defaults(func=run)


def _source_name(config: Config, plan: str) -> str:
    from safehold.service.drills import DRILL_SUFFIX

    project, _, name = plan.rpartition("/")
    name = name.removesuffix(DRILL_SUFFIX) if name not in config.sources else name
    source = config.sources.get(name)
    if source is None:
        raise UsageError(
            f"no source {name!r} in {config.path}",
            hint="its sources are: " + (", ".join(config.sources) or "none"),
        )
    if project and source.common.project != project:
        raise UsageError(
            f"source {name!r} is in project {source.common.project!r}, not {project!r}",
            hint=f"use {source.common.project}/{name}",
        )
    if source.common.drill is None:
        raise UsageError(
            f"source {name!r} has no drill: block",
            hint="add e.g. 'drill: {rto_target: 15m}' to its block (docs/drills.md)",
        )
    return name


def drill_check(drill: DrillConfig) -> DrillCheck:
    """The run's view of ``drill.check``."""
    from safehold.config.drills import DefaultCheck
    from safehold.runs.drill import DrillCheck

    c = drill.check
    d = c.default or DefaultCheck()
    return DrillCheck(
        form=c.form,
        tables=d.tables,
        sample_keys=d.sample_keys,
        min_rows=d.min_rows,
        query=c.query,
        expect=c.expect,
        database=c.database,
        command=c.command,
        timeout=c.timeout,
    )


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``drill``: run one drill; its exit code."""
    from contextlib import nullcontext

    from safehold.cli.service_args import open_service_database, state_dir
    from safehold.config import load_config

    config = load_config(args.config)
    name = _source_name(config, args.plan)
    record = not (args.no_record or args.run_id)
    runs_dir = state_dir(args, config) / "drills"
    opened = open_service_database(args) if record else nullcontext(None)
    with opened as found:
        engine = found[1].engine if found is not None else None
        outcome = _drill(args, ctx, config, name, engine, runs_dir)
    _report(ctx, outcome)
    return outcome.exit_code


def _drill(
    args: argparse.Namespace,
    ctx: Context,
    config: Config,
    name: str,
    engine: Engine | None,
    runs_dir: Path,
) -> DrillOutcome:
    from safehold.app import source_job
    from safehold.cli.config_run import open_configured_repository
    from safehold.cli.runlog import make_sink
    from safehold.clock import utcnow
    from safehold.runs.drill import run_drill

    source = config.sources[name]
    drill = source.common.drill
    assert drill is not None
    project = source.common.project
    job = source_job(config, name, plan=f"{project}/{name}", run_id=args.run_id)
    repo = open_configured_repository(args.config, ctx)
    snap = _snapshot(repo, args.snapshot, name, drill.target, engine, project)
    sink = make_sink(getattr(args, "log_format", None) or "text", quiet=ctx.quiet)
    recorder = _Recorder(engine, project, name, snap.id, drill.rto_target, sink)
    runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        outcome = run_drill(
            repo,
            job,
            snap,
            drill_check(drill),
            state_dir=runs_dir,
            rto_target=drill.rto_target,
            finish_chain=drill.on_failure.finish_chain,
            sink=recorder.sink,
        )
    except BaseException as exc:  # Ctrl-C: recorded, then passed on
        recorder.abort(f"the drill was stopped ({type(exc).__name__}) at {utcnow():%H:%M:%S}")
        raise
    recorder.end(outcome)
    return outcome


def _snapshot(
    repo: Repository,
    given: str | None,
    name: str,
    target: str,
    engine: Engine | None,
    project: str,
) -> Snapshot:
    """The snapshot to drill: the one given, else the drill's target among the plan's
    restore points (the catalog's, else the repository's snapshots of the source)."""
    from safehold.runs.drill import Point, choose_point
    from safehold.service.drills import last_drilled, pick_snapshot

    snaps = repo.list_snapshots()
    if given:
        snap = repo.find_snapshot(given, snapshots=snaps)
        if snap.source_name and snap.source_name != name:
            raise UsageError(
                f"snapshot {snap.short_id} belongs to source {snap.source_name!r}, not {name!r}"
            )
        return snap
    mine = [s for s in snaps if s.source_name == name]
    chosen = pick_snapshot(engine, project, name, target) if engine is not None else None
    by_id: dict[str, Snapshot] = {str(s.id): s for s in mine}
    if chosen in by_id:
        return by_id[chosen]
    last = last_drilled(engine, project, name) if engine is not None else None
    points = [Point(s.id, s.time, s.id if s.isolated else s.chain) for s in mine]
    point = choose_point(points, target, last)
    if point is None:
        raise UsageError(
            f"no snapshot of source {name!r} in the repository: nothing to drill",
            hint=f"back it up first: safehold backup --config FILE --source {name}",
        )
    return by_id[point.snapshot]


class _Recorder:
    """The drill's run (kind ``drill``) and ``drills`` row in the catalog, as it goes:
    its log lines, then its end. Without a catalog it only passes the lines on."""

    def __init__(
        self,
        engine: Engine | None,
        project: str,
        name: str,
        snapshot: str,
        rto_target: float | None,
        out: LogSink,
    ) -> None:
        from safehold.clock import utcnow
        from safehold.service.drills import start_drill

        self.engine = engine
        self.out = out
        self.seq = 0
        self.run_id: uuid.UUID | None = None
        self.drill_id: int | None = None
        if engine is None:
            return
        self.run_id = _new_run(engine, project, name, snapshot)
        self.drill_id = start_drill(
            engine,
            run_id=self.run_id,
            project=project,
            plan=name,
            snapshot=snapshot,
            started=utcnow(),
            rto_target=rto_target,
        )

    def sink(self, event: Any) -> None:
        """Print the event, and keep it as one of the run's lines."""
        import json

        from sqlalchemy import insert

        from safehold.catalog import RunLine

        self.out(event)
        if self.engine is None or self.run_id is None:
            return
        message = event.event
        if event.fields:
            message += " " + json.dumps(event.fields, default=str)
        with self.engine.begin() as db:
            db.execute(
                insert(RunLine).values(
                    run_id=self.run_id,
                    seq=self.seq,
                    at=event.ts,
                    level=event.level,
                    message=message,
                )
            )
        self.seq += 1

    def end(self, outcome: DrillOutcome) -> None:
        """Write the drill's end into its run and row."""
        from safehold.service.drills import end_drill

        if self.engine is None:
            return
        doc = outcome.to_json()
        if self.drill_id is not None:
            end_drill(self.engine, self.drill_id, doc)
        state = "succeeded" if outcome.passed else "failed"
        self._end_run(state, outcome.phases, outcome.error or None, outcome.hint or None)

    def abort(self, error: str) -> None:
        """Record a drill stopped before its end as failed."""
        from safehold.clock import utcnow
        from safehold.service.drills import end_drill

        if self.engine is None:
            return
        if self.drill_id is not None:
            end_drill(
                self.engine,
                self.drill_id,
                {"result": "failed", "error": error, "finished": utcnow().isoformat()},
            )
        self._end_run("cancelled", [], error, None)

    def _end_run(
        self, state: str, phases: list[dict[str, Any]], error: str | None, hint: str | None
    ) -> None:
        import json

        from sqlalchemy import text

        if self.engine is None or self.run_id is None:
            return
        with self.engine.begin() as db:
            db.execute(
                text(
                    "UPDATE runs SET state = :s, ended_at = now(), phases = :p, error = :e, "
                    "hint = :h WHERE id = :r"
                ),
                {"s": state, "p": json.dumps(phases), "e": error, "h": hint, "r": self.run_id},
            )


def _new_run(engine: Engine, project: str, name: str, snapshot: str) -> uuid.UUID | None:
    """A running run of kind ``drill`` for the drill plan (or else the source's plan);
    None if the catalog has neither (the drill is then recorded without a run)."""
    import json

    from sqlalchemy import text

    from safehold.service.drills import drill_plan_name

    run_id = uuid.uuid4()
    with engine.begin() as db:
        plan_id = db.execute(
            text(
                "SELECT id FROM plans WHERE project = :p AND name IN (:d, :n) "
                "ORDER BY name = :d DESC LIMIT 1"
            ),
            {"p": project, "d": drill_plan_name(name), "n": name},
        ).scalar_one_or_none()
        if plan_id is None:
            return None
        db.execute(
            text(
                "INSERT INTO runs (id, plan_id, kind, trigger, state, worker, started_at, "
                "snapshot_id, params) VALUES (:id, :plan, 'drill', 'manual', 'running', :w, "
                "now(), :snap, CAST(:params AS jsonb))"
            ),
            {
                "id": run_id,
                "plan": plan_id,
                "w": f"cli:{socket.gethostname()}",
                "snap": snapshot,
                "params": json.dumps({"snapshot": snapshot}),
            },
        )
    return run_id


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _report(ctx: Context, outcome: DrillOutcome) -> None:
    import sys

    from safehold.cli.context import human_bytes

    if ctx.json:
        ctx.emit_json(outcome.to_json())
    else:
        target = outcome.rto_target_seconds
        versus = ""
        if target is not None and outcome.restore_seconds is not None:
            verdict = "OVER the target" if outcome.over_target else "within the target"
            versus = f" (RTO target {_seconds(target)}: {verdict})"
        size = human_bytes(outcome.bytes) if outcome.bytes is not None else "?"
        ctx.print(
            f"drill of {outcome.plan}: snapshot {outcome.snapshot[:8]} ({size}) restored in "
            f"{_seconds(outcome.restore_seconds)}{versus}"
        )
        for line in outcome.check_output.splitlines()[:40]:
            ctx.print(f"  | {line}")
        ctx.print(
            "drill passed"
            if outcome.passed
            else f"drill FAILED in its {outcome.failed_phase} phase"
        )
    if not outcome.passed:
        print(f"safehold: error: {outcome.error}", file=sys.stderr)
        if outcome.hint:
            print(f"  hint: {outcome.hint}", file=sys.stderr)
        if outcome.finished_chain:
            print(
                f"safehold: chain {outcome.finished_chain[:8]} finished "
                "(drill.on_failure.finish_chain): the next backup is a full one",
                file=sys.stderr,
            )
    elif outcome.over_target:
        print("safehold: warning: the restore took longer than drill.rto_target", file=sys.stderr)
