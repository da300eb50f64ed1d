"""The directory source's exclusion settings: restic's option names, restic's sizes."""

from __future__ import annotations

import pytest

from safehold.sources.base import TreeContent
from safehold.sources.directory import Settings, build


def test_the_settings_reach_the_engine_as_given() -> None:
    settings = Settings.model_validate(
        {
            "paths": ["/srv"],
            "excludes": ["cache/", "!keep"],
            "iexcludes": ["*.TMP"],
            "exclude_caches": True,
            "exclude_if_present": [".nobackup", "CACHEDIR.TAG:Signature: 8a47"],
            "exclude_larger_than": "1G",
        }
    )
    assert build(settings).content() == TreeContent(
        paths=["/srv"],
        excludes=["cache/", "!keep"],
        iexcludes=["*.TMP"],
        exclude_caches=True,
        exclude_if_present=[".nobackup", "CACHEDIR.TAG:Signature: 8a47"],
        exclude_larger_than=1 << 30,  # as restic reads 1G (pydantic's ByteSize: 10**9)
    )


@pytest.mark.parametrize(
    ("text", "size"), [("2048", 2048), (4096, 4096), ("500k", 512_000), ("3M", 3 << 20)]
)
def test_sizes(text: object, size: int) -> None:
    assert (
        Settings.model_validate({"paths": ["/a"], "exclude_larger_than": text}).exclude_larger_than
        == size
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("exclude_larger_than", "1.5G"),
        ("exclude_larger_than", "1GiB"),
        ("exclude_larger_than", -1),
        ("exclude_if_present", [":header"]),
        ("exclude_if_present", ["a/b"]),
    ],
)
def test_bad_values_are_refused(key: str, value: object) -> None:
    with pytest.raises(ValueError):
        Settings.model_validate({"paths": ["/a"], key: value})
