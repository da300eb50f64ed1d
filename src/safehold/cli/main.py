"""Entry point: global options, the command registry, and the one place that maps errors
to exit codes (documented in README.md)."""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence

from safehold import __version__
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
    "repair",
    "forget",
    "prune",
    "copy",
    "archive",
    "stats",
    "chain",
    "unlock",
    "config",
]

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
        importlib.import_module(f"safehold.cli.cmd_{name}").register(sub)
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
        default=default if default is not None else "text",
        help="source runs' log lines on stderr: text, or one JSON object per line",
    )


def _tune_allocator() -> None:
    """Large buffers (chunks, packs) go back to the system when freed; the smaller ones
    stay in the process to be reused.

    glibc raises its mmap threshold after the first large free, after which multi-MiB
    buffers come from thread arenas and are kept: peak RSS then grows with every thread.
    A fixed threshold (which also turns the dynamic adjustment off) keeps them mmapped.
    Below it, glibc gives freed memory at the top of a heap back once more than 128 KiB
    is free, and every page given back is faulted in again by the next allocation: on a
    virtual machine that was a third of a backup's system time (145,000 faults for 2 GiB,
    73,000 with this threshold, for 2 MiB more peak RSS). A long-running process that
    wants its memory back between runs calls ``malloc_trim``.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 4)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _tune_collector() -> None:
    """Collect cycles less often: a walk allocates one dict per file and folder, none in a
    cycle, and with the default gen-0 threshold (700) the collector's passes over them took
    15 % of a no-change backup of 33,000 files (0.08 s of 0.54). At 10,000 the youngest
    generation was still collected 24 times in a re-backup after a 5 % change, 35-50 ms in
    all; at 100,000, 2-6 ms, for 3 MiB more peak memory (105.6 instead of 102.5 MiB: what
    waits longer to be found is only young garbage). Cycles are still found."""
    gc.set_threshold(100_000, 20, 20)


def _tune_switching() -> None:
    """Hand the interpreter lock over after 1 ms instead of 5. Backup and restore threads
    spend most of their time in C (reading, hashing, compression, encryption) with the lock
    released, and need it back only briefly between calls; while another thread runs Python
    (the walk, the planning), each of those short steps waited up to a whole interval. A
    re-backup after a 5 % change took 1.38-1.42 s instead of 1.57-1.68 s, an initial backup
    of 2 GiB 6.43 s instead of 6.78 s (docs/benchmarks.md)."""
    sys.setswitchinterval(0.001)


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
    gc.freeze()
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    _tune_allocator()
    _tune_collector()
    _tune_switching()
    if argv is None:
        argv = sys.argv[1:]
    command = named_command(argv)
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
