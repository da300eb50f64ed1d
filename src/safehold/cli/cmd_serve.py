"""``safehold serve``: run the configured plans on their schedules (docs/service.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import (
    add_loop_arguments,
    add_service_arguments,
    database_url,
    service_clock,
    service_logging,
    state_dir,
)
from safehold.errors import ExitCode, UsageError


def register(sub: Any) -> None:
    """Add ``serve`` to the command line's subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the plans (sources with a schedule) on their schedules",
        description="Run the file's plans on their schedules: a scheduler that records "
        "every slot in the ledger and workers that run the backups, each in a child "
        "process. With no database given it starts a private PostgreSQL under the state "
        "folder (the machine's 'postgresql' package); with --database several processes, "
        "on several machines, share the work. SIGTERM or Ctrl-C stops it (running jobs get "
        "--stop-grace seconds to finish); SIGHUP, or 'serve --reload', reads the file again. "
        "The REST API listens on --listen (docs/api.md).",
    )
    add_service_arguments(p)
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="jobs run at once by this process (default: the file's service.workers, "
        "else the number of cores; 0: scheduler only)",
    )
    p.add_argument(
        "--no-scheduler",
        "--only-workers",
        dest="scheduler",
        action="store_false",
        help="run jobs only (an extra worker machine); another process ticks",
    )
    add_loop_arguments(p, stop_grace=60.0, grace_of="running jobs may go on before they are killed")
    api = p.add_argument_group("the REST API (docs/api.md)")
    api.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:8808",
        help="where the API listens (default: 127.0.0.1:8808; port 0: any free port, "
        "named in the log)",
    )
    api.add_argument("--no-api", dest="api", action="store_false", help="serve no API")
    api.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate")
    api.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    p.add_argument(
        "--reload",
        action="store_true",
        help="tell the running 'serve' of this state folder to read the file again, and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """``serve``: serve; the exit code."""
    from safehold.config import load_config
    from safehold.service.serve import ServeOptions, serve

    config = load_config(args.config)
    folder = state_dir(args, config)
    if args.reload:
        return _reload(folder, ctx)
    workers = args.workers
    if workers is None:
        workers = config.service.workers or os.cpu_count() or 1
    if workers < 0:
        raise UsageError("--workers must be 0 or more")
    if not config.plans:
        print(
            f"safehold: warning: {args.config} has no plans (no source has a schedule:)",
            file=sys.stderr,
        )
    service_logging(getattr(args, "log_format", "text") or "text", quiet=ctx.quiet)
    clock = service_clock()
    options = ServeOptions(
        config_path=os.path.abspath(args.config),
        database=database_url(args, config),
        state_dir=folder,
        workers=workers,
        scheduler=args.scheduler,
        tick_interval=args.tick,
        stop_grace=args.stop_grace,
        clock=clock,
    )
    companions = _api(args)
    pid_file = folder / f"serve.{os.getpid()}.pid"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
        asyncio.run(serve(options, companions=companions))
    finally:
        pid_file.unlink(missing_ok=True)
    return ExitCode.OK


def _api(args: argparse.Namespace) -> list[Any]:
    """The API's companion task, its socket bound now (an address in use fails at once,
    before the database starts); none with ``--no-api``."""
    if not args.api:
        return []
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together", hint="give both, or neither")
    from safehold.api.server import ApiOptions, api_companion, bind, check_tls

    options = ApiOptions(
        listen=args.listen,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
    )
    check_tls(options)
    return [api_companion(bind(options.listen), options)]


def _reload(folder: Path, ctx: Context) -> int:
    sent = 0
    for pid_file in folder.glob("serve.*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
            if b"serve" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                raise ProcessLookupError
            os.kill(pid, signal.SIGHUP)
            sent += 1
        except (ValueError, OSError):
            pid_file.unlink(missing_ok=True)  # left by a process that is gone
    if not sent:
        raise UsageError(
            f"no 'safehold serve' runs with the state folder {folder}",
            hint="start it with: safehold serve --config FILE",
        )
    ctx.print(f"asked {sent} serve process{'es' if sent > 1 else ''} to reload")
    return ExitCode.OK
