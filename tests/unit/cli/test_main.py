"""The entry point: which command a command line names, and that parsing with only that
command's parser gives the same result as with all of them."""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from safehold.cli import main as cli_main
from safehold.cli.main import COMMANDS, build_parser, named_command


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["backup", "/data"], "backup"),
        (["-r", "/repo", "backup", "/data"], "backup"),
        (["--repo", "/repo", "--json", "snapshots"], "snapshots"),
        (["--repo=/repo", "ls", "latest"], "ls"),
        (["-r/repo", "restore", "latest"], "restore"),
        (["-qr", "/repo", "check"], "check"),
        (["--rep", "init", "stats"], "stats"),  # an abbreviated --repo whose value is a word
        (["--password-f", "key", "key", "list"], "key"),
        (["--log-format", "json", "config", "check"], "config"),
        (["-r", "backup", "prune"], "prune"),  # a repository called like a command
        ([], None),
        (["--help"], None),
        (["-h", "backup"], None),
        (["--version"], None),
        (["bakup", "/data"], None),  # unknown: the whole parser reports it
        (["--", "backup"], None),
    ],
)
def test_named_command(argv: list[str], expected: str | None) -> None:
    assert named_command(argv) == expected


def _parsed(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, object]:
    args = vars(parser.parse_args(argv))
    func = args.pop("func", None)
    return {**args, "func": getattr(func, "__module__", None)}


@pytest.mark.parametrize(
    "argv",
    [
        ["-r", "/repo", "backup", "--exclude", "*.tmp", "--tag", "t", "/data"],
        ["--repo=/repo", "--json", "snapshots"],
        ["-qr", "/repo", "restore", "latest", "--target", "/t", "--json"],
        ["--rep", "forget", "forget", "--keep-last", "3", "--prune"],
        ["key", "list", "--json", "-r", "/repo"],
    ],
)
def test_one_command_parses_like_all(argv: list[str]) -> None:
    only = named_command(argv)
    assert only in COMMANDS
    assert _parsed(build_parser(only), argv) == _parsed(build_parser(), argv)


def test_only_the_named_command_is_imported() -> None:
    # A fresh interpreter: the test process has imported every command module already.
    code = (
        "import sys; from safehold.cli.main import build_parser, named_command;"
        "build_parser(named_command(['-r', '/repo', 'snapshots', '--json']));"
        "print(sorted(m for m in sys.modules if m.startswith('safehold.cli.cmd_')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['safehold.cli.cmd_snapshots']"


def test_help_still_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "safehold", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in COMMANDS:
        assert f"    {name}" in out


def test_the_entry_point_exits_with_mains_code_and_spares_the_last_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_main, "main", lambda: 3)
    before = gc.get_freeze_count()
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main.entry()
        assert exited.value.code == 3
        # Every object alive is left out of the collection the interpreter runs at exit.
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_python_dash_m_and_the_console_script_use_the_entry_point() -> None:
    root = Path(__file__).resolve().parents[3]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["safehold"] == "safehold.cli.main:entry"
    proc = subprocess.run(
        [sys.executable, "-m", "safehold", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode == 2  # argparse's usage error, through entry()
