"""Run one configured source once, with its hooks: a backup, or a restore.

A backup run::

    identifier  ->  run lock  ->  pre-backup-lock  ->  pre-backup-check  ->  backup hook
    ->  read the source into a snapshot  ->  backup-cleanup  ->  post-backup-unlock

A restore run::

    identifier  ->  run lock  ->  pre-restore-lock  ->  write the snapshot back
    ->  restore hook  ->  restore-cleanup  ->  post-restore-unlock

Guarantees (docs/hooks.md):

* Once the run lock is held, the cleanup and unlock hooks always run, whatever happened
  before them: a failed or timed-out hook, a failed read, the overall timeout, Ctrl-C.
  They may therefore run after a lock hook that never ran or failed half-way, so they
  must be idempotent.
* A failing ``pre-backup-check`` ends the run as *skipped* (exit code 8), not failed.
* A failing cleanup hook is logged and recorded, never fatal (service-backup's
  ``cleanup_executable``). A failing unlock hook fails the run even when the snapshot
  was saved, because the service may still be locked and someone must look.
* Two runs of one source never overlap: the second waits, or with
  ``exit_if_in_progress`` exits at once (exit code 9).
* The overall ``timeout`` bounds everything before cleanup: each hook gets at most the
  time left, and a read that overruns is interrupted by a SIGALRM where the runtime
  allows one, else ended at the next read (:mod:`safehold.runs.deadline`).

Every run writes a :class:`~safehold.runs.state.RunRecord` and sends log events
(:mod:`safehold.runs.events`) carrying its run id and identifier.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from safehold.clock import utcnow
from safehold.engine.backup import BackupOptions, run_backup
from safehold.engine.progress import NO_PROGRESS, Progress
from safehold.engine.restore import RestoreOptions, run_restore
from safehold.errors import ExitCode, SafeholdError, UsageError
from safehold.repository.repository import Repository
from safehold.repository.snapshot import Snapshot
from safehold.runs.deadline import Deadline, RunTimeout
from safehold.runs.events import LogSink, Redactor, RunLogger, discard
from safehold.runs.job import SourceJob
from safehold.runs.replicate import replicate
from safehold.runs.snapshot_files import snapshot_files
from safehold.runs.state import RunInProgress, RunRecord, run_lock, save_record
from safehold.sources.base import RestoreRequest, Source, TreeContent
from safehold.sources.hooks import HookError, HookResult, HookSpec, run_hook
from safehold.sources.process import CommandFailed

__all__ = ["OnInterrupt", "run_source_backup", "run_source_restore"]

IDENTIFIER_TIMEOUT = 60.0
# What a Ctrl-C does once the run has cleaned up, unlocked and saved its record.
OnInterrupt = Literal["raise", "return"]
_LOG_OUTPUT = 4096  # bytes of a hook's output put in a log line (the record keeps more)


class _Skipped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Run:
    def __init__(self, job: SourceJob, operation: str, state_dir: Path, sink: LogSink) -> None:
        self.job = job
        self.state_dir = state_dir
        self.redactor = Redactor(job.secrets)
        run_id = job.run_id or str(uuid.uuid4())
        self.record = RunRecord(
            run_id=run_id,
            operation=operation,
            source=job.name,
            source_kind=job.kind,
            plan=job.plan or job.name,
            started=utcnow(),
            host=job.host or "",
        )
        self.log = RunLogger(
            sink,
            self.redactor,
            run_id=run_id,
            backup_guid=run_id,
            source=job.name,
            identifier="",
        )
        self.deadline = Deadline(job.timeout)
        self.target_dir = job.target_dir or ""
        self.extra_env: dict[str, str] = {}

    # --- hooks ---------------------------------------------------------------------------

    def _env(self, phase: str) -> dict[str, str]:
        env = {
            "SAFEHOLD_RUN_ID": self.record.run_id,
            "SAFEHOLD_PLAN": self.record.plan,
            "SAFEHOLD_OPERATION": self.record.operation,
            "SAFEHOLD_PHASE": phase,
            "SAFEHOLD_SOURCE": self.job.name,
            "SAFEHOLD_SOURCE_TYPE": self.job.kind,
            "SAFEHOLD_IDENTIFIER": self.record.identifier,
            "SAFEHOLD_TARGET_DIR": self.target_dir,
            "SAFEHOLD_SNAPSHOT": self.record.snapshot,
            "SAFEHOLD_OUTCOME": self.record.outcome,
            **self.extra_env,
        }
        return env

    def _run_spec(self, spec: HookSpec, timeout: float | None) -> HookResult:
        try:
            result = run_hook(
                spec,
                env=self._env(spec.phase),
                timeout=timeout,
                default_user=self.job.backup_user,
                hide_env=self.job.hide_env,
            )
        except BaseException as exc:  # Ctrl-C, or the overall timeout: the hook was killed
            timed_out = isinstance(exc, RunTimeout)
            self.record.phases.append(
                {
                    "phase": spec.phase,
                    "command": self.redactor.text(spec.run),
                    "exit_code": None,
                    "timed_out": timed_out,
                    "interrupted": not timed_out,
                    "error": "the run's timeout ran out" if timed_out else "interrupted",
                }
            )
            self.log.error("hook.killed", phase=spec.phase, timed_out=timed_out)
            raise
        for name in ("command", "stdout", "stderr", "error", "last_printed"):
            setattr(result, name, self.redactor.text(getattr(result, name)))
        result.argv = [self.redactor.text(a) for a in result.argv]
        self.record.phases.append(result.to_json())
        self.log.log(
            "info" if result.ok else "error",
            "hook.finished",
            phase=spec.phase,
            command=result.pasteable(),
            exit_code=result.exit_code,
            timed_out=result.timed_out,
            duration_s=round(result.duration_s, 3),
            stdout=result.stdout[-_LOG_OUTPUT:],
            stderr=result.stderr[-_LOG_OUTPUT:],
            error=result.error,
        )
        if result.lingering:
            # The run goes on without the rest of its output: say why, loudly.
            note = result.lingering_note()
            self.record.warnings.append(note)
            self.log.warning("hook.lingering", phase=spec.phase, message=note)
        return result

    def hook(self, phase: str, *, fatal: bool, capped: bool = True) -> HookResult | None:
        """Run ``phase``'s hook, if any. ``capped``: within the run's overall timeout
        (cleanup and unlock are not: they get their own full time, even after it)."""
        spec = self.job.hooks.get(phase)
        if spec is None:
            return None
        self.log.info("hook.started", phase=phase)
        result = self._run_spec(spec, self.deadline.remaining() if capped else None)
        if fatal and not result.ok:
            detail = result.last_line()
            raise HookError(
                f"the {phase} hook {result.describe()}" + (f": {detail}" if detail else ""),
                hint="its full output is in the run record",
            )
        return result

    def identify(self) -> None:
        ident = self.job.identifier or ""
        if self.job.identifier_command:
            spec = HookSpec(
                phase="identifier", run=self.job.identifier_command, timeout=IDENTIFIER_TIMEOUT
            )
            result = self._run_spec(spec, None)
            lines = result.stdout.strip().splitlines()
            if result.ok and lines:
                ident = lines[0].strip()
            else:
                self.record.warnings.append(
                    f"the identifier command {result.describe()}; the run has no identifier"
                )
                self.log.warning("identifier.failed", error=result.describe())
        self.record.identifier = self.redactor.text(ident)
        self.log.bind(identifier=self.record.identifier)

    # --- the run -------------------------------------------------------------------------

    def execute(
        self,
        body: Callable[[], None],
        cleanup: str,
        unlock: str,
        after: Callable[[], None] | None = None,
        *,
        on_interrupt: OnInterrupt = "raise",
    ) -> RunRecord:
        self.identify()
        self.log.info(
            "run.started",
            operation=self.record.operation,
            source_kind=self.job.kind,
            plan=self.record.plan,
        )
        raised: BaseException | None = None
        try:
            self.deadline.arm()
            with run_lock(
                self.state_dir,
                self.job.name,
                run_id=self.record.run_id,
                wait=not self.job.exit_if_in_progress,
            ):
                save_record(self.state_dir, self.record)
                try:
                    body()
                except BaseException as exc:
                    raised = exc
                finally:
                    self.deadline.disarm()
                self._settle(raised)
                try:
                    self._closing(cleanup, fatal=False)
                finally:
                    self._closing(unlock, fatal=True)
            # After the unlock: the service need not stay locked while copies are made.
            if after is not None and self.record.outcome in ("success", "partial"):
                after()
        except BaseException as exc:  # lock not taken, or Ctrl-C during cleanup/unlock
            self.deadline.disarm()
            if raised is None or isinstance(exc, KeyboardInterrupt):
                raised = exc
                self._settle(exc)
        finally:
            self.deadline.disarm()
        self._finish()
        if on_interrupt == "return" and isinstance(raised, KeyboardInterrupt):
            return self.record  # outcome "interrupted": the caller reports it like the rest
        if raised is not None and not isinstance(raised, SafeholdError | RunTimeout | _Skipped):
            raise raised  # a bug, or Ctrl-C: the caller shows it (the record is saved)
        return self.record

    def _closing(self, phase: str, *, fatal: bool) -> None:
        result = self.hook(phase, fatal=False, capped=False)
        if result is None or result.ok:
            return
        what = f"the {phase} hook {result.describe()}"
        if not fatal or self.record.outcome not in ("success", "partial"):
            self.record.warnings.append(what)
            return
        # The data is safe but the service may still be locked: that needs a person.
        self.record.outcome = "failed"
        self.record.exit_code = ExitCode.SOURCE
        saved = f" (snapshot {self.record.snapshot[:8]} was saved)" if self.record.snapshot else ""
        self.record.error = f"{what}{saved}; the service may still be locked"

    def _settle(self, exc: BaseException | None) -> None:
        rec = self.record
        if exc is None:
            if rec.outcome == "running":
                rec.outcome, rec.exit_code = "success", ExitCode.OK
            return
        if isinstance(exc, _Skipped):
            rec.outcome, rec.exit_code, rec.reason = "skipped", ExitCode.SKIPPED, exc.reason
        elif isinstance(exc, RunInProgress):
            rec.outcome, rec.exit_code, rec.error = "in-progress", exc.exit_code, exc.message
            rec.hint = exc.hint or ""
        elif isinstance(exc, RunTimeout):
            rec.outcome, rec.exit_code = "timeout", ExitCode.SOURCE
            rec.error = (
                f"the run of source {self.job.name!r} timed out after "
                f"{self.deadline.seconds:g} s (the source's timeout)"
            )
        elif isinstance(exc, KeyboardInterrupt):
            rec.outcome, rec.exit_code, rec.error = (
                "interrupted",
                ExitCode.INTERRUPTED,
                "interrupted",
            )
        elif isinstance(exc, SafeholdError):
            rec.outcome, rec.exit_code, rec.error = "failed", exc.exit_code, exc.message
            rec.hint = exc.hint or ""
            failed = _command_failure(exc)
            if failed is not None:
                # The message shows its last lines; the record keeps all that was kept.
                rec.error_output = self.redactor.text(failed.stderr)
        else:
            rec.outcome, rec.exit_code = "failed", ExitCode.FAILURE
            rec.error = f"unexpected {type(exc).__name__}: {exc}"
        rec.error = self.redactor.text(rec.error)
        rec.hint = self.redactor.text(rec.hint)
        rec.reason = self.redactor.text(rec.reason)

    def _finish(self) -> None:
        rec = self.record
        rec.finished = utcnow()
        try:
            save_record(self.state_dir, rec)
        except OSError as exc:
            rec.warnings.append(f"the run record could not be written: {exc.strerror}")
        level = {"success": "info", "skipped": "warning", "partial": "warning"}.get(
            rec.outcome, "error"
        )
        self.log.log(
            level,
            "run.finished",
            operation=rec.operation,
            outcome=rec.outcome,
            exit_code=rec.exit_code,
            snapshot=rec.snapshot or None,
            error=rec.error or None,
            hint=rec.hint or None,
            error_output=rec.error_output or None,
            reason=rec.reason or None,
            warnings=rec.warnings,
            duration_s=round((rec.finished - rec.started).total_seconds(), 3),
        )


def _command_failure(exc: BaseException) -> CommandFailed | None:
    """The failed tool behind ``exc`` (the engine wraps it to say no snapshot was saved)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, CommandFailed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def run_source_backup(
    repo: Repository,
    job: SourceJob,
    *,
    state_dir: Path,
    sink: LogSink = discard,
    progress: Progress = NO_PROGRESS,
    threads: int | None = None,
    on_interrupt: OnInterrupt = "raise",
) -> RunRecord:
    """Back ``job``'s source up once, hooks and all; the record says how it went.

    Failures become the record's outcome and exit code; only a KeyboardInterrupt or an
    unexpected bug propagates (after cleanup, unlock and the record). With
    ``on_interrupt="return"`` an interrupted run returns its record too (outcome
    ``interrupted``, exit code 130), for a front end that reports every run alike.
    """
    run = _Run(job, "backup", state_dir, sink)

    def body() -> None:
        run.hook("pre-backup-lock", fatal=True)
        check = run.hook("pre-backup-check", fatal=False)
        if check is not None and not check.ok:
            reason = check.last_line() or check.describe()
            raise _Skipped(f"the pre-backup-check hook {check.describe()}: {reason}")
        run.hook("backup", fatal=True)
        run.deadline.check()
        content = job.source.content()
        opts = BackupOptions(
            tags=list(job.tags),
            host=job.host,
            chain_length=job.chain_length,
            isolated=job.isolated,
            source_kind=job.kind,
            source_name=job.name,
        )
        if isinstance(content, TreeContent):
            opts.paths = list(content.paths)
            opts.excludes = list(content.excludes)
            opts.one_file_system = content.one_file_system
            opts.iexcludes = list(content.iexcludes)
            opts.exclude_caches = content.exclude_caches
            opts.exclude_if_present = list(content.exclude_if_present)
            opts.exclude_larger_than = content.exclude_larger_than
        else:
            opts.streams = [run.deadline.bound(s) for s in content.streams]
        if threads:
            opts.threads = max(1, threads)
        run.log.info(
            "backup.reading", streams=[s.name for s in opts.streams or []], paths=opts.paths
        )
        result = run_backup(repo, opts, progress)
        run.record.snapshot = result.snapshot.id
        saved = result.snapshot
        run.record.chain = {"id": saved.chain, "seq": saved.chain_seq, "isolated": saved.isolated}
        run.record.summary = dict(result.summary)
        run.log.info("backup.saved", snapshot=result.snapshot.id, summary=run.record.summary)
        if result.errors:
            run.record.outcome, run.record.exit_code = "partial", ExitCode.PARTIAL
            run.record.warnings.extend(f"could not read {p}: {m}" for p, m in result.errors)

    def copies() -> None:
        _replicate(run, repo, job, progress)

    return run.execute(
        body, "backup-cleanup", "post-backup-unlock", copies, on_interrupt=on_interrupt
    )


def _replicate(run: _Run, repo: Repository, job: SourceJob, progress: Progress) -> None:
    """Send the new snapshot to every further destination; each fails on its own."""
    if not job.destinations:
        return
    snap = repo.find_snapshot(run.record.snapshot)
    for outcome in replicate(repo, snap, job.destinations, progress):
        outcome.error = run.redactor.text(outcome.error)
        run.record.destinations.append(outcome.to_json())
        run.log.log(
            "info" if outcome.ok else "error",
            "destination.finished",
            destination=outcome.destination,
            status=outcome.status,
            target=outcome.target or None,
            error=outcome.error or None,
        )
        if not outcome.ok:
            # The snapshot is safe in the repository, but not everywhere it should be.
            run.record.outcome = "partial"
            run.record.exit_code = ExitCode.STORAGE
            run.record.warnings.append(f"copy to {outcome.destination} failed: {outcome.error}")


def run_source_restore(
    repo: Repository,
    job: SourceJob,
    snap: Snapshot,
    *,
    state_dir: Path,
    target: str | None = None,
    replace: bool = False,
    jobs: int = 1,
    sink: LogSink = discard,
    progress: Progress = NO_PROGRESS,
    on_interrupt: OnInterrupt = "raise",
    includes: Sequence[str] = (),
) -> RunRecord:
    """Restore ``snap`` through ``job``'s source once, with the restore hooks (a Ctrl-C
    as :func:`run_source_backup` says). ``includes`` (restore patterns) limit a tree
    source's restore to what they match; a stream source restores whole or not at all.

    A stream source restores itself (``Source.restore``: into a database, a file...); a
    tree source (its ``restore`` raises NotImplementedError) is written under ``target``
    by the engine. The ``restore`` hook runs after the data is in place, so it can load
    it into the service (OSB's agent downloads first, then calls its restore script).
    """
    if includes and not job.target_dir:
        raise UsageError(
            f"source {job.name!r} is restored whole (it is not a folder of files)",
            hint="restore the whole point, without --include",
        )
    run = _Run(job, "restore", state_dir, sink)
    run.record.snapshot = snap.id
    run.record.target = target or ""
    # For a tree source the target is a folder; for others it may be a database name.
    run.target_dir = os.path.abspath(target) if target and job.target_dir else ""
    run.extra_env = {"SAFEHOLD_RESTORE_TARGET": target or "", "SAFEHOLD_REPLACE": str(int(replace))}

    def body() -> None:
        run.hook("pre-restore-lock", fatal=True)
        run.deadline.check()
        run.log.info("restore.writing", snapshot=snap.id, target=target)
        errors, damaged = _restore_data(
            repo, job.source, snap, target, replace, jobs, progress, includes
        )
        run.log.info("restore.written", snapshot=snap.id, target=target, errors=len(errors))
        if damaged:
            # A folder whose tree is damaged or hostile was left empty: damage, exit 4.
            run.record.outcome, run.record.exit_code = "damaged", ExitCode.INTEGRITY
        elif errors:
            run.record.outcome, run.record.exit_code = "partial", ExitCode.PARTIAL
        run.record.warnings.extend(f"could not restore {p}: {m}" for p, m in errors)
        run.hook("restore", fatal=True)

    return run.execute(body, "restore-cleanup", "post-restore-unlock", on_interrupt=on_interrupt)


def _restore_data(
    repo: Repository,
    source: Source,
    snap: Snapshot,
    target: str | None,
    replace: bool,
    jobs: int,
    progress: Progress,
    includes: Sequence[str] = (),
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Write ``snap`` back; returns the items a tree restore could not write, and the
    folders among them whose tree is damaged or hostile."""
    with repo.lock("restore"):  # keeps prune from removing what is being read
        repo.confirm_snapshot(snap)
        files = snapshot_files(repo, snap)
        try:
            source.restore(files, RestoreRequest(target=target, replace=replace, jobs=jobs))
            return [], []
        except NotImplementedError:
            pass  # a tree source: the engine writes its files
    if not target:
        raise UsageError(
            f"restoring a {snap.source or 'directory'} snapshot needs a target folder",
            hint="add --target DIR (use --target / --replace to put files back where they were)",
        )
    if not replace and _has_entries(target):
        raise UsageError(
            f"the restore target {target} already holds files",
            hint="choose an empty folder, or add --replace to overwrite what is there",
        )
    opts = RestoreOptions(target=target, includes=list(includes))
    result = run_restore(repo, snap, opts, progress)
    return result.errors, result.damaged


def _has_entries(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True
