"""The command source: a command's output as one stream; restore into another command."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

from safehold.errors import SourceError, UsageError
from safehold.sources import process
from safehold.sources.base import RestoreRequest
from safehold.sources.command import CommandSource, Settings, build
from safehold.sources.process import CommandFailed, ToolMissing
from tests.process_groups import gone, read_pid
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


# --- standard error, descendants (issue 15) ------------------------------------------------

PG_DUMP_DYING = r"""
for i in $(seq 1 400); do echo "pg_dump: dumping contents of table public.t$i" >&2; done
echo 'pg_dump: error: Dumping the contents of table "orders" failed: PQgetResult() failed.' >&2
echo 'pg_dump: detail: Error message from server: server closed the connection unexpectedly' >&2
printf '\tThis probably means the server terminated abnormally\n' >&2
echo 'pg_dump: detail: Command was: COPY public.orders (id, total) TO stdout;' >&2
exit 1
"""


def test_a_failure_shows_the_end_of_stderr_and_keeps_its_last_8_kib() -> None:
    src = source(command=PG_DUMP_DYING, shell=True)
    with pytest.raises(CommandFailed) as caught:
        read_stream(src.content().streams[0])
    err = caught.value
    summary, intro, *shown = err.message.splitlines()
    assert summary == "command source 'stdout': sh exited with status 1"
    assert intro == "  its standard error ended with:"
    # The cause ("server closed the connection") is shown, not only the last line.
    assert "server closed the connection unexpectedly" in err.message
    assert (
        shown[-1].strip()
        == "pg_dump: detail: Command was: COPY public.orders (id, total) TO stdout;"
    )
    assert len(shown) <= 13 and shown[0].strip().startswith("[… ")
    # The whole tail the docs promise is kept for the run record.
    assert 8000 < len(err.stderr.encode()) <= 8192
    assert err.stderr.endswith("Command was: COPY public.orders (id, total) TO stdout;")
    assert err.status == 1


def test_a_dump_that_fails_is_not_held_by_what_it_left_running(tmp_path: Path) -> None:
    pgid = tmp_path / "pgid"
    src = source(command=f"echo $$ > {pgid}; echo rows; sleep 30 & exit 3", shell=True)
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="status 3"):
        read_stream(src.content().streams[0])
    assert time.monotonic() - started < 15  # well under the child's 30 s
    assert gone(read_pid(pgid)), "the dump's background child survived"


def test_a_dump_whose_output_stays_held_after_it_exited_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(process, "DRAIN_IDLE", 1.0)
    pgid = tmp_path / "pgid"
    src = source(command=f"echo $$ > {pgid}; echo rows; sleep 30 &", shell=True)
    started = time.monotonic()
    with pytest.raises(SourceError, match="still held its standard output") as caught:
        read_stream(src.content().streams[0])
    assert time.monotonic() - started < 15
    assert "may be incomplete" in caught.value.message
    assert gone(read_pid(pgid))


def test_output_still_written_after_the_command_exited_is_kept() -> None:
    # A compressor behind a process substitution may finish after the shell exits.
    src = source(command="echo one; (sleep 0.5; echo two) &", shell=True)
    assert read_stream(src.content().streams[0]) == b"one\ntwo\n"


def test_a_restore_command_that_fails_shows_its_stderr_and_is_not_held(tmp_path: Path) -> None:
    pgid = tmp_path / "pgid"
    script = (
        f"echo $$ > {pgid}; sleep 30 & cat >/dev/null; echo 'psql: FATAL: no space' >&2; exit 2"
    )
    src = source(command="true", name="x", restore_command=script, shell=True)
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="status 2: psql: FATAL: no space"):
        src.restore(MemoryFiles({"x": b"y" * 100_000}), RestoreRequest())
    assert time.monotonic() - started < 15
    assert gone(read_pid(pgid))


def test_a_missing_program_is_named_so_it_can_be_pasted(tmp_path: Path) -> None:
    missing = str(tmp_path / "it's missing")
    src = source(command=[missing, "--all"])
    with pytest.raises(ToolMissing) as caught:
        read_stream(src.content().streams[0])
    assert f"could not start {shlex.quote(missing)}:" in caught.value.message
