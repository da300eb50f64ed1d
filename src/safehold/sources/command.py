"""The command source: any command's standard output, saved as one named file.

``pg_dumpall``, ``etcdctl snapshot save /dev/stdout``, a script: the output streams
straight into the chunker (no temporary file), and a command that exits non-zero makes the
stream's close raise SourceError, so no snapshot is saved. Restoring pipes the saved file
into ``restore_command``'s standard input; where it goes and whether existing data may be
overwritten is that command's business, told through ``SAFEHOLD_RESTORE_TARGET`` and
``SAFEHOLD_RESTORE_REPLACE``.

Commands run without a shell unless ``shell: true``: a string is split like a shell would
(``shlex``) but never interpreted, so quoting mistakes cannot turn into injected commands.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from safehold.errors import UsageError
from safehold.sources.base import RestoreRequest, SnapshotFiles, Stream, StreamContent
from safehold.sources.process import command_sink, command_stream

__all__ = ["CommandSource", "Settings", "build"]

_COPY = 1 << 20


class Settings(BaseModel):
    """``type: command`` — a command whose standard output is the backup."""

    model_config = ConfigDict(extra="forbid")

    command: str | list[str]
    shell: bool = False
    # The file name the output gets at the snapshot's root (what `safehold dump` takes).
    name: str = "stdout"
    # Extra environment for both commands; values may be secrets, so they never show in
    # reprs or logs (credentials belong here or in files, never on the command line).
    env: dict[str, SecretStr] = Field(default_factory=dict)
    cwd: str | None = None
    restore_command: str | list[str] | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not name or "/" in name or name in {".", ".."} or "\0" in name:
            raise ValueError("must be a plain file name (no '/'), e.g. 'etcd.snapshot'")
        return name

    @field_validator("command", "restore_command")
    @classmethod
    def _not_empty(cls, cmd: str | list[str] | None) -> str | list[str] | None:
        if cmd is not None and (not cmd or (isinstance(cmd, str) and not cmd.strip())):
            raise ValueError("the command is empty")
        return cmd

    @model_validator(mode="after")
    def _shell_takes_a_string(self) -> Settings:
        if self.shell and (
            isinstance(self.command, list) or isinstance(self.restore_command, list)
        ):
            raise ValueError("with shell: true, give each command as one string")
        for cmd in (self.command, self.restore_command):
            if isinstance(cmd, str) and not self.shell:
                try:
                    shlex.split(cmd)
                except ValueError as exc:  # an unclosed quote
                    raise ValueError(f"cannot split {cmd!r} into arguments ({exc})") from exc
        return self


def _argv(cmd: str | list[str], shell: bool) -> list[str]:
    if shell:
        assert isinstance(cmd, str)
        return ["/bin/sh", "-c", cmd]
    if isinstance(cmd, list):
        return list(cmd)
    return shlex.split(cmd)  # checked by Settings: quoting is balanced


class CommandSource:
    """A command's standard output as one stream (see the module docstring); restores by
    piping the file into ``restore_command``."""

    kind = "command"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._argv = _argv(settings.command, settings.shell)
        self._restore_argv = (
            _argv(settings.restore_command, settings.shell)
            if settings.restore_command is not None
            else None
        )

    def _env(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.settings.env.items()}

    def content(self) -> StreamContent:
        """One stream, named ``name``: the command's standard output, run when the stream opens."""
        name = self.settings.name

        @contextmanager
        def opener() -> Iterator[BinaryIO]:
            with command_stream(
                self._argv,
                what=f"command source {name!r}",
                env=self._env(),
                cwd=self.settings.cwd,
            ) as out:
                yield out

        return StreamContent([Stream(name, opener)])

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Pipe the saved file into ``restore_command`` (target and replace passed in its
        environment); raises :class:`UsageError` without one, :class:`SourceError` if it fails."""
        name = self.settings.name
        if self._restore_argv is None:
            raise UsageError(
                f"command source {name!r} has no restore_command",
                hint="set restore_command (it reads the saved output on its standard input), "
                f"or write the file out with: safehold dump SNAPSHOT /{name} > FILE",
            )
        env = self._env()
        env["SAFEHOLD_RESTORE_REPLACE"] = "1" if request.replace else "0"
        if request.target is not None:
            env["SAFEHOLD_RESTORE_TARGET"] = request.target
        with (
            files.open(name) as src,
            command_sink(
                self._restore_argv,
                what=f"restore of command source {name!r}",
                env=env,
                cwd=self.settings.cwd,
            ) as sink,
        ):
            shutil.copyfileobj(src, sink, _COPY)

    def __repr__(self) -> str:
        # The argv is shown by name only: arguments may hold things better not logged.
        return f"CommandSource(command={self._argv[0]!r}, name={self.settings.name!r})"


def build(settings: Settings) -> CommandSource:
    """The source for a validated ``command`` block (the registry's entry point)."""
    return CommandSource(settings)
