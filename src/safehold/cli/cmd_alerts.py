"""``safehold alerts``: the service's incidents; ``alerts test``: a message through each
channel of the configuration's receivers."""

from __future__ import annotations

import argparse
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, open_service_database
from safehold.errors import ExitCode, UsageError


def register(sub: Any) -> None:
    """Add ``alerts`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "alerts",
        help="list the service's open incidents, or send a test message (alerts test)",
        description="List the incidents the service's alerts opened (failed runs, missed "
        "slots, RPO breaches, failed copies, lost agents...), newest first, with how their "
        "messages went; --all adds the resolved ones. 'alerts test' sends a test message "
        "through every channel of the file's receivers (or of --receiver NAME) and says "
        "which failed (docs/alerts.md).",
    )
    p.add_argument("test", nargs="?", choices=("test",), help=argparse.SUPPRESS)
    p.add_argument("--all", action="store_true", help="resolved incidents too")
    p.add_argument("--receiver", metavar="NAME", help="with 'test': only this receiver")
    p.add_argument("--limit", type=int, default=200, metavar="N", help="at most N (default 200)")
    add_service_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``alerts``: list, or test; the exit code."""
    if args.test:
        return _test(args, ctx)
    from safehold.service.alerts import incidents_list

    with open_service_database(args) as (_config, database):
        rows = incidents_list(database.engine, include_resolved=args.all, limit=args.limit)
    if ctx.json:
        ctx.emit_json(rows)
        return 0
    if not rows:
        ctx.print("no open incidents" if not args.all else "no incidents")
    for row in rows:
        where = f"{row['project']}/{row['plan']}" if row["plan"] else row["project"]
        if row["subject"]:
            where += f" ({row['subject']})"
        sent = f"sent {row['sent']}"
        if row["pending"]:
            sent += f", pending {row['pending']}"
        if row["failed"]:
            sent += f", FAILED {row['failed']}"
        ctx.print(
            f"#{row['id']:<5} {row['state']:<8} {row['opened_at']:%Y-%m-%d %H:%M}  "
            f"{row['kind']:<15} {where}  [{sent}]"
        )
        ctx.print(f"       {row['error'] or ''}")
        if row["hint"]:
            ctx.print(f"       next: {row['hint']}")
    return 0


def _test(args: argparse.Namespace, ctx: Context) -> int:
    from safehold.config import load_config
    from safehold.config.alerts import alerts_secrets
    from safehold.service.alerts_delivery import build_channel, send_now
    from safehold.service.alerts_messages import trial_message

    config = load_config(args.config)
    receivers = dict(config.alerts.receivers) if config.alerts else {}
    if args.receiver is not None:
        if args.receiver not in receivers:
            raise UsageError(
                f"no receiver {args.receiver!r} in {config.path}",
                hint="its receivers are: " + (", ".join(receivers) or "none"),
            )
        receivers = {args.receiver: receivers[args.receiver]}
    if not receivers:
        raise UsageError(
            f"{config.path} has no alerts receivers",
            hint="add alerts: receivers: (docs/alerts.md)",
        )
    secrets = alerts_secrets(config.alerts)
    results: list[dict[str, Any]] = []
    for name, receiver in receivers.items():
        for channel_name, channel_config in receiver.named_channels():
            channel = build_channel(channel_config)
            error = send_now(channel, trial_message(name, channel_name), secrets)
            results.append(
                {"receiver": name, "channel": channel_name, "label": channel.label,
                 "ok": error is None, "error": error}
            )  # fmt: skip
    failed = [r for r in results if not r["ok"]]
    if ctx.json:
        ctx.emit_json(results)
    else:
        for r in results:
            state = "sent" if r["ok"] else "FAILED"
            ctx.print(f"{r['receiver']}/{r['channel']}  {r['label']}  {state}")
            if r["error"]:
                ctx.print(f"    {r['error']}")
        ctx.print(f"{len(results) - len(failed)} of {len(results)} channel(s) sent the test")
    return ExitCode.FAILURE if failed else 0
