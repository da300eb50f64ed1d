"""The command source: a command's output as one stream; restore into another command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from safehold.errors import SourceError, UsageError
from safehold.sources.base import RestoreRequest
from safehold.sources.command import CommandSource, Settings, build
from safehold.sources.process import ToolMissing
from tests.unit.sources.memfiles import MemoryFiles, read_stream

PY = sys.executable


def source(**settings: object) -> CommandSource:
    return build(Settings.model_validate(settings))


def test_output_becomes_the_named_stream() -> None:
    src = source(
        command=[PY, "-c", "import sys; sys.stdout.buffer.write(b'x' * 3_000_000)"], name="dump.bin"
    )
    (stream,) = src.content().streams
    assert stream.name == "dump.bin"
    assert read_stream(stream) == b"x" * 3_000_000


def test_a_string_is_split_without_a_shell(tmp_path: Path) -> None:
    src = source(command=f"{PY} -c 'import sys; print(sys.argv[1:])' '$HOME; rm -rf x' a")
    assert read_stream(src.content().streams[0]) == b"['$HOME; rm -rf x', 'a']\n"


def test_shell_true_runs_through_sh() -> None:
    src = source(command="printf one; printf ' two'", shell=True)
    assert read_stream(src.content().streams[0]) == b"one two"


def test_env_reaches_the_command_and_stays_out_of_reprs() -> None:
    src = source(
        command=[PY, "-c", "import os; print(os.environ['DUMP_TOKEN'], end='')"],
        env={"DUMP_TOKEN": "s3cr3t"},
    )
    assert read_stream(src.content().streams[0]) == b"s3cr3t"
    assert "s3cr3t" not in repr(src) and "s3cr3t" not in repr(src.settings)


def test_a_failing_command_is_a_source_error() -> None:
    src = source(
        command=[
            PY,
            "-c",
            "import sys; print('partial'); sys.stderr.write('disk on fire'); sys.exit(4)",
        ]
    )
    with pytest.raises(SourceError, match=r"status 4: disk on fire"):
        read_stream(src.content().streams[0])


def test_a_missing_program_names_itself() -> None:
    src = source(command="no-such-dump-tool --all")
    with pytest.raises(ToolMissing, match="no-such-dump-tool"):
        read_stream(src.content().streams[0])


def test_restore_pipes_the_file_into_restore_command(tmp_path: Path) -> None:
    out = tmp_path / "restored"
    code = (
        "import os, sys; open(os.environ['SAFEHOLD_RESTORE_TARGET'], 'wb')"
        ".write(sys.stdin.buffer.read() + os.environ['SAFEHOLD_RESTORE_REPLACE'].encode())"
    )
    src = source(command="true", name="etcd.snap", restore_command=[PY, "-c", code])
    payload = bytes(range(256)) * 20_000
    files = MemoryFiles({"etcd.snap": payload}, step=65_536)
    src.restore(files, RestoreRequest(target=str(out), replace=True))
    assert out.read_bytes() == payload + b"1"


def test_a_failing_restore_command_is_a_source_error() -> None:
    # It quits without reading: a broken pipe must come out as its exit status.
    src = source(command="true", name="x", restore_command=[PY, "-c", "import sys; sys.exit(7)"])
    with pytest.raises(SourceError, match="status 7"):
        src.restore(MemoryFiles({"x": b"y" * 5_000_000}), RestoreRequest())


def test_restore_without_restore_command_says_how() -> None:
    src = source(command="true", name="out.bin")
    with pytest.raises(UsageError, match="no restore_command") as err:
        src.restore(MemoryFiles({"out.bin": b""}), RestoreRequest())
    assert "safehold dump SNAPSHOT /out.bin" in str(err.value)


def test_restore_of_a_snapshot_without_the_file() -> None:
    src = source(command="true", name="a", restore_command="cat")
    with pytest.raises(UsageError, match="no file 'a'"):
        src.restore(MemoryFiles({"b": b""}), RestoreRequest())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"command": ""}, "empty"),
        ({"command": []}, "empty"),
        ({"command": "a 'b"}, "cannot split"),
        ({"command": ["a"], "shell": True}, "one string"),
        ({"command": "a", "name": "x/y"}, "plain file name"),
        ({"command": "a", "commnd": "b"}, "extra"),
    ],
)
def test_settings_are_checked(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.model_validate(settings)
