"""``safehold agent``'s command line: its three forms, and options on either side of a
sub-command."""

from __future__ import annotations

import pytest

from safehold.cli.main import build_parser


@pytest.mark.parametrize(
    ("argv", "command", "log_format"),
    [
        (["agent", "--config", "f.yaml"], None, None),
        (["--log-format", "text", "agent", "--config", "f.yaml"], None, "text"),
        (["agent", "--config", "f.yaml", "--log-format", "text"], None, "text"),
        (["agent", "--config", "f.yaml", "run", "redis"], "run", None),
        (["agent", "run", "redis", "--config", "f.yaml", "--log-format", "text"], "run", "text"),
        (["agent", "status", "--config", "f.yaml", "--json"], "status", None),
    ],
)
def test_the_forms_and_where_options_go(
    argv: list[str], command: str | None, log_format: str | None
) -> None:
    args = build_parser("agent").parse_args(argv)
    assert args.agent_command == command
    assert args.config == "f.yaml"
    # None: the agent's default, JSON; given anywhere, it is kept.
    assert args.log_format == log_format
    if command == "run":
        assert args.source == "redis"
    if command == "status":
        assert args.json


def test_the_state_dir_given_before_the_sub_command_is_kept() -> None:
    args = build_parser("agent").parse_args(
        ["agent", "--state-dir", "/s", "--config", "f.yaml", "status"]
    )
    assert (args.state_dir, args.config) == ("/s", "f.yaml")
