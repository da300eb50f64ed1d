"""``safehold serve``: run the configured plans on their schedules (docs/service.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from safehold.cli.context import Context
from safehold.cli.service_args import add_service_arguments, database_url, state_dir
from safehold.clock import Clock
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
    p.add_argument(
        "--tick",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between two looks at the schedules (default: 1)",
    )
    p.add_argument(
        "--stop-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running jobs may go on before they are killed (default: 60)",
    )
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
    _logging(getattr(args, "log_format", "text") or "text", quiet=ctx.quiet)
    clock = _clock()
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


def _clock() -> Clock:
    """The system clock, or for the project's own tests a faster one shared by several
    processes (``SAFEHOLD_TEST_CLOCK=ORIGIN:SPEED``, safehold.clock.ScaledClock)."""
    from safehold.clock import SYSTEM_CLOCK, ScaledClock

    given = os.environ.get("SAFEHOLD_TEST_CLOCK")
    if not given:
        return SYSTEM_CLOCK
    try:
        return ScaledClock.parse(given)
    except ValueError:
        raise UsageError(
            f"SAFEHOLD_TEST_CLOCK={given!r} is not ORIGIN:SPEED", hint="unset it"
        ) from None


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


class _JsonFormatter(logging.Formatter):
    """One JSON object a line, as the runs' own log lines are."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": "service",
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        return json.dumps(line, default=str)


def _logging(fmt: str, *, quiet: bool) -> None:
    import time

    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = _JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger("safehold")
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    # procrastinate's own lines (jobs started, finished) at warning and above only.
    logging.getLogger("procrastinate").addHandler(handler)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
