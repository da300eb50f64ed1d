"""``safehold agent``: the standalone agent, its manual trigger and its status (docs/agent.md).

``safehold agent --config FILE`` runs alone; ``agent run SOURCE`` and ``agent status``
are sub-commands, so that the agent that works for a service (``--server URL``, a later
step) can join as options of the same command without changing these.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_loop_arguments
from safehold.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from safehold.config import Config
    from safehold.runs.events import LogSink


def _options(p: argparse.ArgumentParser, default: Any) -> None:
    """The options every form takes; ``default`` is SUPPRESS on the sub-commands, so that
    ``agent --config F run S`` and ``agent run S --config F`` both keep the value."""
    g = p.add_argument_group("the agent's file and state")
    g.add_argument("--config", metavar="FILE", default=default, help="the YAML configuration file")
    g.add_argument(
        "--state-dir",
        metavar="DIR",
        default=default,
        help="the agent's state folder (default: the file's service.state_dir + /agent, else "
        "/var/lib/safehold/agent for root and ~/.local/share/safehold/agent for others)",
    )


def register(sub: Any) -> None:
    """Add ``agent`` and its sub-commands to the command line."""
    p: argparse.ArgumentParser = sub.add_parser(
        "agent",
        help="run the file's scheduled sources alone, with no service and no database "
        "(Cloud Foundry service-backup's way)",
        description="With no sub-command: run each scheduled source of the file on its "
        "schedule, each backup in a child process, until SIGTERM or Ctrl-C (running backups "
        "are interrupted: SIGINT, then killed after --stop-grace); SIGHUP reads the file "
        "again. Its state (the newest slot decided, the last result and success of each "
        "source) is a JSON file in the state folder. Logs are one JSON object a line on "
        "standard error, each run's with its backup_guid (--log-format text for people).",
    )
    _options(p, None)
    add_loop_arguments(
        p, stop_grace=10.0,
        grace_of="an interrupted backup has to run its unlock and cleanup hooks before "
        "it is killed",
    )  # fmt: skip
    remote = p.add_argument_group(
        "working for a service (safehold serve): its plans with agent: NAME run here"
    )
    remote.add_argument(
        "--server",
        metavar="URL",
        default=os.environ.get("SAFEHOLD_SERVER"),
        help="the service's API (default: $SAFEHOLD_SERVER); the agent takes its jobs from "
        "it over HTTP instead of running the file's schedules itself",
    )
    remote.add_argument(
        "--token-file",
        metavar="FILE",
        default=os.environ.get("SAFEHOLD_TOKEN_FILE"),
        help="a file holding a token of role agent (default: $SAFEHOLD_TOKEN_FILE)",
    )
    remote.add_argument("--name", metavar="NAME", help="this agent's name (the plans' agent:)")
    remote.add_argument(
        "--concurrency", type=int, default=2, metavar="N", help="jobs run at once (default: 2)"
    )
    remote.add_argument(
        "--ca-file", metavar="FILE", help="the CA that signed the service's certificate"
    )
    p.set_defaults(func=run, agent_command=None)
    subs = p.add_subparsers(dest="agent_command", metavar="{run,status}")
    manual = subs.add_parser(
        "run",
        help="back up one source now, once, in the foreground (the manual trigger)",
        description="Back up SOURCE now, once, as the agent would (same run lock, state file "
        "and log lines), with no retries; its retention: follows a success. If a run of the "
        "source is going and the source says exit_if_in_progress, exit at once with code 9; "
        "otherwise wait for it. The exit code is the backup's.",
    )
    manual.add_argument("source", metavar="SOURCE", help="the source's name in the file")
    _options(manual, argparse.SUPPRESS)
    manual.set_defaults(func=run)
    status = subs.add_parser(
        "status",
        help="each source's schedule, next slot, last result and last success",
        description="Read the file and the agent's state file (the agent need not run).",
    )
    _options(status, argparse.SUPPRESS)
    status.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``agent``, ``agent run`` or ``agent status``; the exit code."""
    from safehold.config import load_config

    if not args.config:
        raise UsageError("safehold agent needs --config FILE", hint="safehold agent --config FILE")
    config_path = os.path.abspath(args.config)
    config = load_config(config_path)
    folder = _state_dir(args, config)
    if args.agent_command == "status":
        return _status(ctx, config, folder)
    sink = _sink(args, ctx)
    if args.agent_command == "run":
        return _run_now(ctx, config_path, args.source, folder, sink)
    if getattr(args, "server", None):
        return _remote(args, config_path, folder)
    return _serve(args, config, config_path, folder, sink)


def _remote(args: argparse.Namespace, config_path: str, folder: Path) -> int:
    """``agent --server URL``: take the jobs of the plans bound to this agent."""
    from safehold.agent.remote import RemoteOptions, check_server, read_token, serve_remote
    from safehold.cli.service_args import service_logging

    if not args.token_file or not args.name:
        raise UsageError(
            "safehold agent --server needs --token-file FILE and --name NAME",
            hint="make a token with: safehold token create --role agent --project P",
        )
    if args.concurrency < 1 or args.stop_grace < 0:
        raise UsageError("--concurrency must be 1 or more and --stop-grace zero or more")
    options = RemoteOptions(
        server=check_server(args.server),
        token=read_token(args.token_file),
        name=args.name,
        config_path=config_path,
        state_dir=folder,
        concurrency=args.concurrency,
        stop_grace=args.stop_grace,
        ca_file=args.ca_file,
    )
    service_logging(getattr(args, "log_format", None) or "json", quiet=False)
    return asyncio.run(serve_remote(options))


def _state_dir(args: argparse.Namespace, config: Config) -> Path:
    from safehold.agent import default_agent_dir

    if args.state_dir:
        return Path(args.state_dir)
    if config.service.state_dir:
        return Path(config.service.state_dir) / "agent"
    return default_agent_dir()


def _sink(args: argparse.Namespace, ctx: Context) -> LogSink:
    from safehold.cli.runlog import make_sink

    # JSON unless told otherwise: the agent's log goes to a log shipper, as service-backup's
    # does; --log-format text for people.
    return make_sink(getattr(args, "log_format", None) or "json", quiet=ctx.quiet)


def _serve(
    args: argparse.Namespace, config: Config, config_path: str, folder: Path, sink: LogSink
) -> int:
    from safehold.agent import AgentOptions, run_agent
    from safehold.cli.service_args import service_clock

    if args.tick <= 0 or args.stop_grace < 0:
        raise UsageError("--tick must be above zero and --stop-grace zero or more")
    if not config.plans:
        raise UsageError(
            f"{config_path} has no scheduled source: the agent would have nothing to do",
            hint="give a source a schedule: (service-backup: cron_schedule:), or back it up "
            "once with: safehold agent run SOURCE --config FILE",
        )
    options = AgentOptions(
        config_path=config_path,
        state_dir=folder,
        tick_interval=args.tick,
        stop_grace=args.stop_grace,
        clock=service_clock(),
    )
    asyncio.run(run_agent(options, sink))
    return ExitCode.OK


def _run_now(ctx: Context, config_path: str, source: str, folder: Path, sink: LogSink) -> int:
    from safehold.agent import run_now
    from safehold.agent.runner import SAVED
    from safehold.cli.service_args import service_clock

    result = asyncio.run(
        run_now(config_path, source, state_dir=folder, clock=service_clock(), sink=sink)
    )
    if ctx.json:
        ctx.emit_json(result.to_json())
    elif result.outcome in SAVED:
        ctx.print(f"source {source}: snapshot {result.snapshot[:8]} saved (run {result.run_id})")
    if result.outcome == "in-progress":
        _error(
            f"source {source}: a backup is already in progress; exiting, as "
            "exit_if_in_progress says (another backup can start once it has finished)"
        )
        return ExitCode.IN_PROGRESS
    if result.outcome == "interrupted":
        _error("interrupted")
    elif result.outcome == "skipped":
        _error(f"source {source}: backup skipped by its pre-backup-check hook")
    elif result.outcome not in SAVED:
        _error(result.error or f"the backup ended as {result.outcome}")
    if result.exit_code is not None:
        return result.exit_code
    return ExitCode.OK if result.outcome in SAVED else ExitCode.FAILURE


def _status(ctx: Context, config: Config, folder: Path) -> int:
    from safehold.agent import agent_status
    from safehold.cli.service_args import service_clock

    found = agent_status(config, folder, service_clock().now())
    if ctx.json:
        ctx.emit_json(found)
        return ExitCode.OK
    pid = found["agent_pid"]
    ctx.print(f"agent: {'running, pid ' + str(pid) if pid else 'not running'} ({folder})")
    rows = [("SOURCE", "SCHEDULE", "NEXT SLOT", "LAST RESULT", "LAST SUCCESS")]
    for s in found["sources"]:
        result, success = s["last_result"], s["last_success"]
        last = "-"
        if s["running"]:
            last = "running"
        elif result:
            last = f"{result['outcome']} {_short(result['ended'] or result['started'])}"
        rows.append(
            (
                s["source"],
                (s["schedule"] or "(no schedule)") + (" paused" if s["paused"] else ""),
                _short(s["next_slot"]) if s["next_slot"] else "-",
                last,
                f"{_short(success['ended'])} {(success['snapshot'] or '')[:8]}" if success else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        ctx.print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    _print_incidents(ctx, found)
    return ExitCode.OK


def _print_incidents(ctx: Context, found: dict[str, Any]) -> None:
    """The open incidents and the alerts that did not go (agent/alerts.py)."""
    incidents = found.get("open_incidents") or []
    ctx.print(f"open incidents: {len(incidents) or 'none'}")
    for item in incidents:
        since = _short(item.get("opened_at"))
        ctx.print(f"  {item['source']}: backup failed since {since}, run {item.get('run_id')}, "
                  f"phase {item.get('phase')}: {item.get('error')}")  # fmt: skip
    for s in found["sources"]:
        failed = s.get("deliveries_failed") or []
        if s.get("deliveries_pending") or failed:
            ctx.print(f"  {s['source']}: alerts pending {s.get('deliveries_pending', 0)}, "
                      f"FAILED {len(failed)}")  # fmt: skip
        for item in failed:
            to = f"{item.get('receiver')}/{item.get('channel')}" if item.get("receiver") else ""
            ctx.print(f"    {item.get('what')} {item.get('event')} {to} after "
                      f"{item.get('attempts')} attempts: {item.get('last_error')}")  # fmt: skip


def _short(iso: str | None) -> str:
    return (iso or "-")[:19].replace("T", " ")


def _error(message: str) -> None:
    print(f"safehold: error: {message}", file=sys.stderr)
