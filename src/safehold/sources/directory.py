"""The directory source: folders and files, walked by the engine.

This is what ``safehold backup PATH...`` does, as a configured source: the engine walks
``paths`` (skipping ``excludes``, staying on each path's file system when
``one_file_system`` is set), deduplicates against the source's previous snapshot and
restores with ``safehold restore SNAPSHOT --target FOLDER``. The source itself only says
what to walk; it has no restore of its own because the engine's tree restore (file modes,
times, owners, links, ``--include``) is the restore.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from safehold.sources.base import RestoreRequest, SnapshotFiles, TreeContent

__all__ = ["DirectorySource", "Settings", "build"]


class Settings(BaseModel):
    """``type: directory`` — the folders (or single files) to back up."""

    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(min_length=1)
    excludes: list[str] = Field(default_factory=list)
    one_file_system: bool = False

    @field_validator("paths")
    @classmethod
    def _no_empty_path(cls, paths: list[str]) -> list[str]:
        if any(not p.strip() for p in paths):
            raise ValueError("a path is empty")
        return paths


class DirectorySource:
    kind = "directory"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def content(self) -> TreeContent:
        s = self.settings
        # Copies: the engine must not share (and so could not change) the settings' lists.
        return TreeContent(
            paths=list(s.paths), excludes=list(s.excludes), one_file_system=s.one_file_system
        )

    def restore(self, files: SnapshotFiles, request: RestoreRequest) -> None:
        raise NotImplementedError(
            "a directory source is restored by the engine's tree restore "
            "(safehold restore SNAPSHOT --target FOLDER), not by the source"
        )

    def __repr__(self) -> str:
        return f"DirectorySource(paths={self.settings.paths!r})"


def build(settings: Settings) -> DirectorySource:
    return DirectorySource(settings)
