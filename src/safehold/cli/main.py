"""Entry point: global options, the command registry, and the one place that maps errors
to exit codes (documented in README.md)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from safehold import __version__, runtime
from safehold.cli.early_key import derive_key_ahead
from safehold.errors import ExitCode, SafeholdError

# One module per command; each has ``register(subparsers)`` that sets ``func``.
COMMANDS = [
    "init",
    "key",
    "backup",
    "snapshots",
    "ls",
    "find",
    "tag",
    "mount",
    "diff",
    "restore",
    "dump",
    "check",
    "verify",
    "repair",
    "forget",
    "prune",
    "copy",
    "archive",
    "stats",
    "chain",
    "unlock",
    "config",
    "serve",
    "plans",
    "plan",
    "runs",
    "restore-points",
    "workers",
    "catalog",
    "token",
    "agent",
    "destinations",
    "alerts",
    "drill",
    "drills",
    "report",
]

# Commands that run (or talk to) the long-running service, under runtime.SERVICE.
SERVICE_COMMANDS = (
    "serve",
    "plans",
    "plan",
    "runs",
    "jobs",
    "restore-points",
    "workers",
    "token",
    "agent",
    "destinations",
    "alerts",
    "drills",
    "report",
)

EPILOG = """\
environment:
  SAFEHOLD_REPOSITORY       repository location (instead of -r)
  SAFEHOLD_PASSWORD         repository password
  SAFEHOLD_PASSWORD_FILE    file holding the password
  SAFEHOLD_PASSWORD_COMMAND command that prints the password
  SAFEHOLD_CACHE_DIR        where the local index caches live (instead of --cache-dir)

exit codes:
  0 success                 1 unexpected failure        2 bad arguments or input
  3 backup saved, some files unreadable                 4 damaged data found
  5 storage failed          6 source command failed     7 restore target not writable
  8 backup skipped by its pre-backup-check hook         9 a run of that source is in progress
  10 no repository there    11 repository locked        12 wrong password
  130 interrupted
"""


# Global options followed by a value (``--repo X``; ``--repo=X`` and ``-rX`` carry theirs).
_VALUE_OPTIONS = ("--repo", "--password-file", "--password-command", "--cache-dir", "--log-format")
_FLAG_LETTERS = set("qh")  # short global flags that may precede -r in one cluster (-qr X)


def named_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, read past the global options, or None if unsure.

    Importing every command's module to build the whole parser took 0.04 s of every run
    (a tenth of a no-change backup's start-up); the command being run needs only its own.
    Anything this does not recognise (an unknown word, ``--``, help) gets the whole parser,
    so every error message and ``--help`` stays the same.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in COMMANDS:
            return arg
        if arg == "--" or not arg.startswith("-") or arg in ("-h", "--help"):
            return None
        if arg.startswith("--"):
            # argparse takes any unambiguous prefix of a long option.
            takes_value = "=" not in arg and any(o.startswith(arg) for o in _VALUE_OPTIONS)
        else:
            takes_value = arg.endswith("r") and set(arg[1:-1]) <= _FLAG_LETTERS
        i += 2 if takes_value else 1
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser: with every command, or with ``only`` that one."""
    parser = argparse.ArgumentParser(
        prog="safehold",
        description="Back up data services: deduplicated, compressed, encrypted, verified.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"safehold {__version__}")
    _global_options(parser, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in [only] if only in COMMANDS else COMMANDS:
        importlib.import_module(f"safehold.cli.cmd_{name.replace('-', '_')}").register(sub)
    # Global options are accepted after the command too (`safehold snapshots --json`,
    # `safehold key list --json`); SUPPRESS keeps a subcommand from resetting what was
    # given before it.
    for subparser in _subparsers(parser):
        _global_options(subparser, argparse.SUPPRESS)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command and sub-command parser below ``parser``, each once."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                if sp not in found:
                    found.append(sp)
                    found.extend(s for s in _subparsers(sp) if s not in found)
    return found


def _global_options(p: argparse.ArgumentParser, default: object) -> None:
    g = p.add_argument_group("global options")
    g.add_argument(
        "-r",
        "--repo",
        default=default,
        help="repository location: a folder, s3:https://HOST/BUCKET/PREFIX, azure:CONTAINER/"
        "PREFIX, gs:BUCKET/PREFIX, sftp:USER@HOST:PORT/PATH, swift:CONTAINER/PREFIX "
        "(docs/storage/); credentials come from each platform's usual variables",
    )
    g.add_argument(
        "--password-file", metavar="FILE", default=default, help="read the password from FILE"
    )
    g.add_argument(
        "--password-command",
        metavar="CMD",
        default=default,
        help="run CMD and use its output as the password",
    )
    g.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=default,
        help="keep the repositories' loaded indexes under DIR (default: $SAFEHOLD_CACHE_DIR, "
        "else $XDG_CACHE_HOME/safehold or ~/.cache/safehold)",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        default=default,
        help="load the index from the repository's index files only, without the local cache",
    )
    g.add_argument("--json", action="store_true", default=default, help="machine-readable output")
    g.add_argument("-q", "--quiet", action="store_true", default=default, help="print only errors")
    g.add_argument(
        "--log-format",
        choices=("text", "json"),
        # None when not given: each command has its default (text; json for the agent).
        default=default,
        help="source runs' log lines on stderr: text, or one JSON object per line "
        "(default: text; json for 'safehold agent')",
    )


# The command line's process-wide settings (safehold.runtime says why each, measured);
# a module global so that an experiment (bench/whatif.py) can change one before main runs.
RUNTIME = runtime.COMMAND_LINE


def entry() -> None:
    """The program's entry point (``safehold``, ``python -m safehold``): :func:`main`, then
    leave without the interpreter's last collection.

    At exit the collector walks every object still alive (modules, classes, the index) to
    look for cycles: 30-40 ms of a re-backup after a small change, 3 % of it. Objects are
    still released and streams flushed; frozen objects are only left out of that search,
    which at exit finds nothing that the system does not free anyway (files are closed by
    the code that opens them). Not in :func:`main` itself: a program that calls it and
    goes on (a test, a wrapper) keeps collecting normally.
    """
    code = main()
    runtime.leave_without_collection()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse ``argv``, run the command, and map errors to the exit code it
    returns (the one place that does)."""
    if argv is None:
        argv = sys.argv[1:]
    command = named_command(argv)
    # `serve` runs for days beside its jobs' children: the long-running settings (none of
    # the command line's); its jobs run as command lines in their own processes.
    runtime.configure(runtime.SERVICE if command in SERVICE_COMMANDS else RUNTIME)
    if command is not None:
        derive_key_ahead(argv)  # on the other core, while the command's modules load
    # Only now the modules every command needs (the repository, its crypto and storage):
    # the key is being derived meanwhile.
    from safehold.cli.context import Context

    parser = build_parser(command)
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return ExitCode.USAGE
        code: int = args.func(args, Context(args))
        return code
    except SafeholdError as exc:
        print(f"safehold: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("safehold: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
