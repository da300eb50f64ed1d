"""``backup --config FILE --source NAME`` and ``restore --config ...``: one configured source.

The repository comes from the file's ``repository:`` block unless ``-r`` is given; the
password from ``--password-file``/``--password-command`` if given, else from the block
(``password_file``, ``password_command``, ``password_env``, ``password``), else from
``SAFEHOLD_PASSWORD*`` as for every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safehold.cli.context import Context, print_warning, read_password
from safehold.errors import ConfigError, ExitCode, UsageError

# The configuration layer (pydantic models, every source kind's settings) is imported
# when a command uses --config, not when the CLI starts: every other command stays fast.
if TYPE_CHECKING:
    from safehold.config import Config
    from safehold.config.models import RepositoryConfig
    from safehold.policy import RetentionPolicy
    from safehold.repository.repository import Repository
    from safehold.runs import Destination, LogSink, RunRecord, SourceJob
    from safehold.storage.base import Storage

__all__ = [
    "add_config_arguments",
    "backup_from_config",
    "open_configured_repository",
    "restore_from_config",
    "source_retention",
]


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``--config``/``--source`` options of the commands that run a configured source."""
    g = p.add_argument_group("configured sources (docs/configuration.md)")
    g.add_argument("--config", metavar="FILE", help="the YAML configuration file")
    g.add_argument(
        "--source",
        metavar="NAME",
        help="the source to run, from the file's sources: (may be left out if it has one)",
    )
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        help="run locks and run records (default: $SAFEHOLD_STATE_DIR or ~/.local/state/safehold)",
    )
    # Set by `safehold serve` when it runs a plan in a child process: its catalog row and
    # the run's log lines then carry the same run id and plan.
    g.add_argument("--run-id", metavar="UUID", type=_uuid, help=argparse.SUPPRESS)
    g.add_argument("--plan", metavar="PROJECT/NAME", help=argparse.SUPPRESS)


def _uuid(text: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _sink(ctx: Context) -> LogSink:
    from safehold.cli.runlog import make_sink

    return make_sink(getattr(ctx.args, "log_format", None) or "text", quiet=ctx.quiet)


def _beside(config: Config, path: str) -> str:
    """A relative path in the file is relative to the file's folder."""
    if os.path.isabs(path) or config.path.startswith("<"):
        return path
    return os.path.join(os.path.dirname(os.path.abspath(config.path)), path)


def _password(ctx: Context, config: Config, block: RepositoryConfig | None) -> bytes:
    a = ctx.args
    if a.password_file or a.password_command or block is None:
        return ctx.password()
    if block.password is not None:
        return block.password.get_secret_value().encode()
    if block.password_env is not None:
        value = os.environ.get(block.password_env)
        if not value:
            raise ConfigError(
                f"repository.password_env names {block.password_env}, which is not set",
                hint=f"export {block.password_env}, or change repository.password_env",
            )
        return value.encode()
    if block.password_file or block.password_command:
        file = _beside(config, block.password_file) if block.password_file else None
        return read_password(file, block.password_command)
    return ctx.password()


def _block_password(config: Config, block: RepositoryConfig, what: str) -> bytes | None:
    """A destination's own password (or an archive's passphrase); None if it has none."""
    if block.password is not None:
        return block.password.get_secret_value().encode()
    if block.password_env is not None:
        value = os.environ.get(block.password_env)
        if not value:
            raise ConfigError(
                f"{what}.password_env names {block.password_env}, which is not set",
                hint=f"export {block.password_env}, or change {what}.password_env",
            )
        return value.encode()
    if block.password_file or block.password_command:
        file = _beside(config, block.password_file) if block.password_file else None
        return read_password(file, block.password_command, prompt=f"{what} password")
    return None


_ARCHIVE_KEYS = ("prefix", "level", "tmpdir")


def _destinations(config: Config, cache: dict[str, Any]) -> list[Destination]:
    """The file's further destinations, opened lazily (one that is down fails alone)."""
    from safehold.app import open_repository, open_storage
    from safehold.archive import ArchiveOptions
    from safehold.runs import ArchiveDestination, RepositoryDestination
    from safehold.storage.location import redact

    out: list[Destination] = []
    for i, dest in enumerate(config.destinations):
        what = f"destinations[{i}]"
        label = dest.name or redact(dest.location)
        secret = _block_password(config, dest, what)
        options = dict(dest.options)
        location = dest.location
        if dest.format == "archive":
            extra = {k: options.pop(k) for k in _ARCHIVE_KEYS if k in options}
            archive = ArchiveOptions(
                prefix=str(extra.get("prefix", "")),
                passphrase=secret,
                level=int(extra.get("level", 3)),
                tmpdir=str(extra["tmpdir"]) if "tmpdir" in extra else None,
            )

            def open_store(loc: str = location, opts: dict[str, object] = options) -> Storage:
                return open_storage(loc, create=True, options=opts or None)

            out.append(ArchiveDestination(label, open_store, archive))
            continue
        if secret is None:
            raise ConfigError(
                f"{what} ({label}) has no password",
                hint="give it password_file, password_command or password_env "
                "(each repository has its own key)",
            )

        def open_repo(
            loc: str = location, pw: bytes = secret, opts: dict[str, object] = options
        ) -> Repository:
            return open_repository(loc, pw, options=opts or None, on_warning=print_warning, **cache)

        out.append(RepositoryDestination(label, open_repo))
    return out


def _open(ctx: Context, config: Config) -> tuple[Repository, bytes]:
    from safehold.app import open_repository

    block = config.repository
    if ctx.args.repo:
        repo = open_repository(
            ctx.args.repo, ctx.password(), on_warning=print_warning, **ctx.cache_options()
        )
        return repo, b""
    if block is None:
        if not os.environ.get("SAFEHOLD_REPOSITORY"):
            raise UsageError(
                f"{config.path} has no repository: and none was given",
                hint="add 'repository: LOCATION' to the file, or use -r/--repo",
            )
        return ctx.open_repo(), b""
    password = _password(ctx, config, block)
    repo = open_repository(
        block.location,
        password,
        options=block.options or None,
        on_warning=print_warning,
        **ctx.cache_options(),
    )
    return repo, password


def add_config_repository_argument(p: argparse.ArgumentParser) -> None:
    """``--config FILE``: a reading command (``snapshots``, ``ls``, ``diff``) takes its
    repository and password from a configuration file, as the service's children do."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read the repository (and its password) from this configuration file",
    )


def repository_of(args: argparse.Namespace, ctx: Context) -> Repository:
    """The repository of ``--config FILE``, else of ``-r``/``SAFEHOLD_REPOSITORY``."""
    if args.config:
        return open_configured_repository(args.config, ctx)
    return ctx.open_repo()


def open_configured_repository(path: str, ctx: Context) -> Repository:
    """The repository of the file at ``path`` (``-r`` and the password flags still win)."""
    from safehold.config import load_config

    return _open(ctx, load_config(path))[0]


def source_retention(
    args: argparse.Namespace, ctx: Context, given: RetentionPolicy
) -> tuple[RetentionPolicy, str | None]:
    """``forget --config FILE [--source NAME]``: the keep rules and the source to apply
    them to. Rules given on the command line win over the source's ``retention:``."""
    from safehold.config import choose_source, load_config

    if not args.config:
        raise UsageError("--source needs --config (the file that names the source)")
    config = load_config(args.config)
    if args.source is None:
        return given, None
    source = choose_source(config, args.source)
    if not given.is_empty() or args.snapshots:
        return given, source.name
    if source.common.retention is None:
        raise UsageError(
            f"source {source.name!r} in {args.config} has no retention:",
            hint="add e.g. 'retention: {keep_daily: 7}' to its block, or give keep rules "
            "here (--keep-daily 7)",
        )
    return source.common.retention.policy(), source.name


def _prepare(ctx: Context, args: argparse.Namespace) -> tuple[Config, SourceJob, LogSink, Path]:
    from safehold.app import source_job
    from safehold.clock import utcnow
    from safehold.config import load_config
    from safehold.runs import LogEvent, default_state_dir

    config = load_config(args.config)
    sink = _sink(ctx)
    for warning in config.warnings:
        sink(LogEvent(utcnow(), "warning", "config.warning", {"message": warning}))
    job = source_job(
        config, args.source, plan=getattr(args, "plan", None) or "", run_id=args.run_id
    )
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    return config, job, sink, state_dir


def _with_password(job: SourceJob, password: bytes) -> SourceJob:
    if not password:
        return job
    return dataclasses.replace(job, secrets=[*job.secrets, password.decode(errors="replace")])


def _report(ctx: Context, record: RunRecord) -> int:
    if ctx.json:
        ctx.emit_json(record.to_json())
    elif record.outcome in ("success", "partial"):
        verb = "saved" if record.operation == "backup" else "restored"
        ctx.print(
            f"source {record.source}: snapshot {record.snapshot[:8]} {verb} (run {record.run_id})"
        )
    if record.outcome == "skipped":
        print(f"safehold: {record.source}: backup skipped: {record.reason}", file=sys.stderr)
    elif record.outcome == "interrupted":
        print("safehold: interrupted", file=sys.stderr)
    elif record.outcome not in ("success", "partial"):
        print(f"safehold: error: {record.error_text()}", file=sys.stderr)
    for warning in record.warnings:
        print(f"safehold: warning: {warning}", file=sys.stderr)
    return ExitCode.OK if record.exit_code is None else record.exit_code


def backup_from_config(args: argparse.Namespace, ctx: Context) -> int:
    """``backup --config``: run the source's backup (hooks, time-out, destinations) and return
    its exit code; raises :class:`UsageError` for options the file decides."""
    from safehold.cli.progress import make_progress
    from safehold.runs import run_source_backup

    if args.paths or args.stdin_name or args.command or args.exclude or args.one_file_system:
        raise UsageError(
            "--config takes what to back up from the file",
            hint="drop the paths, --stdin-name, --command, --exclude and --one-file-system "
            "(set them in the source's block), or drop --config",
        )
    if args.parent or args.force or args.isolated:
        raise UsageError(
            "--parent, --force and --isolated are not available with --config",
            hint="for isolated snapshots of a source, give its block 'isolated: true'",
        )
    config, job, sink, state_dir = _prepare(ctx, args)
    # Command-line flags add to (tags) or override (host, chain length) the file's.
    job = dataclasses.replace(
        job,
        tags=[*job.tags, *args.tag],
        host=args.host or job.host,
        chain_length=job.chain_length if args.chain_length is None else args.chain_length,
    )
    repo, password = _open(ctx, config)
    job = _with_password(job, password)
    job = dataclasses.replace(job, destinations=_destinations(config, ctx.cache_options()))
    record = run_source_backup(
        repo,
        job,
        state_dir=state_dir,
        sink=sink,
        progress=make_progress(ctx.progress_enabled()),
        threads=args.threads,
        on_interrupt="return",  # --json prints the record of an interrupted run too
    )
    return _report(ctx, record)


def restore_from_config(args: argparse.Namespace, ctx: Context) -> int:
    """``restore --config``: restore the source through its own tool; raises
    :class:`UsageError` for options that do not apply."""
    from safehold.cli.progress import make_progress
    from safehold.runs import run_source_restore

    if args.include and not args.target:
        raise UsageError(
            "--include with --config restores part of a folder source into a new folder",
            hint="add --target DIR",
        )
    config, job, sink, state_dir = _prepare(ctx, args)
    repo, password = _open(ctx, config)
    job = _with_password(job, password)
    snaps = repo.list_snapshots()
    if args.snapshot == "latest":
        mine = [s for s in snaps if s.source_name == job.name]
        if not mine:
            raise UsageError(
                f"no snapshot of source {job.name!r} in the repository",
                hint="back it up first: safehold backup --config FILE --source " + job.name,
            )
        snap = repo.find_snapshot("latest", host=args.host, tags=args.tag or None, snapshots=mine)
    else:
        snap = repo.find_snapshot(args.snapshot, snapshots=snaps)
        if snap.source_name and snap.source_name != job.name:
            raise UsageError(
                f"snapshot {snap.short_id} belongs to source {snap.source_name!r}, "
                f"not {job.name!r}",
                hint=f"use --source {snap.source_name}",
            )
    record = run_source_restore(
        repo,
        job,
        snap,
        state_dir=state_dir,
        target=args.target,
        replace=args.replace,
        jobs=args.jobs or 1,
        sink=sink,
        progress=make_progress(ctx.progress_enabled()),
        on_interrupt="return",
        includes=args.include,
    )
    return _report(ctx, record)
