"""The directory source: folders and files, walked by the engine.

This is what ``safehold backup PATH...`` does, as a configured source: the engine walks
``paths`` (leaving out what ``excludes`` and the other ``exclude_*`` settings say, with
restic's meaning, as the command line's options of the same names; staying on each path's
file system when ``one_file_system`` is set), deduplicates against the source's previous
snapshot and restores with ``safehold restore SNAPSHOT --target FOLDER``. The source itself
only says what to walk; it has no restore of its own because the engine's tree restore
(file modes, times, owners, links, ``--include``) is the restore.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from safehold.sources.base import RestoreRequest, SnapshotFiles, TreeContent

__all__ = ["DirectorySource", "Settings", "build"]

# The sizes of policy/patterns.py's parse_size (sources do not import policy).
_SIZE = re.compile(r"([0-9]+)([bkmgt]?)", re.IGNORECASE)
_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40}


class Settings(BaseModel):
    """``type: directory`` — the folders (or single files) to back up."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(min_length=1)
    # As backup's --exclude, --iexclude, --exclude-caches, --exclude-if-present and
    # --exclude-larger-than (the patterns are checked when the backup starts).
    excludes: list[str] = Field(default_factory=list)
    iexcludes: list[str] = Field(default_factory=list)
    exclude_caches: bool = False
    exclude_if_present: list[str] = Field(default_factory=list)
    exclude_larger_than: int | None = Field(default=None, ge=0)
    one_file_system: bool = False

    @field_validator("exclude_larger_than", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """``2048``, ``500k``, ``1G``: powers of 1024, as restic and the command line read
        them (not pydantic's ByteSize, where ``1G`` is 10**9)."""
        if not isinstance(value, str):
            return value
        m = _SIZE.fullmatch(value.strip())
        if m is None:
            raise ValueError("give bytes, or a number with a suffix k, m, g or t")
        return int(m.group(1)) << _SHIFT[m.group(2).lower()]

    @field_validator("exclude_if_present")
    @classmethod
    def _tags(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            name = spec.partition(":")[0]
            if not name or "/" in name:
                raise ValueError(f"{spec!r}: give a file name, optionally followed by ':HEADER'")
        return specs

    @field_validator("paths")
    @classmethod
    def _no_empty_path(cls, paths: list[str]) -> list[str]:
        if any(not p.strip() for p in paths):
            raise ValueError("a path is empty")
        return paths


class DirectorySource:
    """Folders for the engine to walk; restored by the engine's tree restore, not by itself."""

    kind = "directory"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def content(self) -> TreeContent:
        """The paths for the engine to walk, with the source's excludes."""
        s = self.settings
        # Copies: the engine must not share (and so could not change) the settings' lists.
        return TreeContent(
            paths=list(s.paths),
            excludes=list(s.excludes),
            one_file_system=s.one_file_system,
            iexcludes=list(s.iexcludes),
            exclude_caches=s.exclude_caches,
            exclude_if_present=list(s.exclude_if_present),
            exclude_larger_than=s.exclude_larger_than,
        )

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        """Never: the engine's tree restore restores a directory source (NotImplementedError)."""
        raise NotImplementedError(
            "a directory source is restored by the engine's tree restore "
            "(safehold restore SNAPSHOT --target FOLDER), not by the source"
        )

    def __repr__(self) -> str:
        return f"DirectorySource(paths={self.settings.paths!r})"


def build(settings: Settings) -> DirectorySource:
    """The source for a validated ``directory`` block (the registry's entry point)."""
    return DirectorySource(settings)
