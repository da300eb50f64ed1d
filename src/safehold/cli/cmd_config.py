"""``safehold config check FILE``: validate a configuration file without running anything."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safehold.cli.context import Context
from safehold.errors import ExitCode, SafeholdError
from safehold.storage.location import redact


def register(sub: Any) -> None:
    """Add ``config`` and its subcommand (check) to the parser."""
    p: argparse.ArgumentParser = sub.add_parser(
        "config",
        help="check a configuration file",
        description="Work with the YAML configuration (docs/configuration.md).",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser(
        "check",
        help="validate FILE: every key, hook script and source; runs nothing",
        description="Validate FILE and build each source (no hook or backup runs). Every "
        "problem is listed with its key path and line. Exit code 0 when valid, 2 when not.",
    )
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace, ctx: Context) -> int:
    """``config check``: validate a configuration file and build every source it names."""
    from safehold.app import source_job
    from safehold.config import load_config  # pydantic: only when needed

    config = load_config(args.file)
    problems: list[str] = []
    for name in config.sources:
        try:
            source_job(config, name)
        except SafeholdError as exc:
            problems.append(f"sources.{name}: {exc}")
    repo = redact(config.repository.location) if config.repository else None
    if ctx.json:
        ctx.emit_json(
            {
                "file": config.path,
                "valid": not problems,
                "repository": repo,
                "destinations": [
                    {"name": d.name, "location": redact(d.location), "format": d.format}
                    for d in config.destinations
                ],
                "sources": {
                    name: {
                        "type": sc.kind,
                        "hooks": sorted(sc.common.hooks.by_phase()),
                        "line": sc.line,
                    }
                    for name, sc in config.sources.items()
                },
                "warnings": config.warnings,
                "problems": problems,
            }
        )
    else:
        ctx.print(f"{config.path}: repository {repo or '(not set: use -r)'}")
        for name, sc in config.sources.items():
            hooks = ", ".join(sc.common.hooks.by_phase()) or "no hooks"
            ctx.print(f"  source {name}: type {sc.kind}; {hooks}")
    for warning in config.warnings:
        print(f"safehold: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"safehold: error: {problem}", file=sys.stderr)
    return ExitCode.USAGE if problems else ExitCode.OK
