"""The directory source: what to walk, handed to the engine as it was configured."""

from __future__ import annotations

import pytest

from safehold.sources.base import RestoreRequest, Source, TreeContent
from safehold.sources.directory import Settings, build
from safehold.sources.registry import kind_module
from tests.unit.sources.memfiles import MemoryFiles


def test_content_is_the_configured_tree() -> None:
    src = build(Settings(paths=["/srv/data", "/etc/app"], excludes=["*.tmp"], one_file_system=True))
    assert isinstance(src, Source) and src.kind == "directory"
    content = src.content()
    assert content == TreeContent(
        paths=["/srv/data", "/etc/app"], excludes=["*.tmp"], one_file_system=True
    )
    content.paths.append("/elsewhere")  # the engine cannot change the configuration
    assert src.content().paths == ["/srv/data", "/etc/app"]


def test_restore_is_the_engines() -> None:
    src = build(Settings(paths=["/srv/data"]))
    with pytest.raises(NotImplementedError, match="--target"):
        src.restore(MemoryFiles({}), RestoreRequest())


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Settings(paths=[])
    with pytest.raises(ValueError, match="empty"):
        Settings(paths=[" "])
    with pytest.raises(ValueError, match="extra"):
        Settings.model_validate({"paths": ["/a"], "exclude": ["b"]})


def test_every_kind_of_mine_is_registered() -> None:
    for kind in ("directory", "command", "sqlite", "volume"):
        module = kind_module(kind)
        assert hasattr(module, "Settings") and hasattr(module, "build")
