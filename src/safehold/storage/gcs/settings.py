"""The settings of a ``gs:`` location: ``gs:BUCKET/PREFIX`` and its options, validated.

Options may also ride in the location's query string, except the key: a location ends up
in shell history, process lists and logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
)

from safehold.errors import ConfigError
from safehold.storage.common import (
    check_aliases,
    check_prefix,
    merge_query,
    settings_error,
    split_path,
)

__all__ = ["LIST_PAGE_SIZE", "GcsSettings", "parse_settings"]

#: Options holding secrets: accepted in a config block, refused in a location's query.
_SECRETS = frozenset({"credentials_json", "service_account_json"})
# 3-63 characters (up to 222 with dots), lowercase letters, digits, '-', '_' and '.',
# starting and ending with a letter or digit (the service's rule, loosely).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
#: The service's own maximum page; fewer pages mean fewer round trips.
LIST_PAGE_SIZE = 1000


class GcsSettings(BaseModel):
    """A destination block's keys for a ``gs:`` location (the seeds' names work too)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    credentials_json: SecretStr | dict[str, Any] | None = Field(
        default=None,
        validation_alias=AliasChoices("credentials_json", "service_account_json"),
        repr=False,
    )
    credentials_file: str | None = None
    project: str | None = Field(
        default=None, validation_alias=AliasChoices("project", "project_id")
    )
    endpoint: str | None = None
    create_bucket: bool = True
    connect_timeout: PositiveFloat = 10.0
    read_timeout: PositiveFloat = 60.0
    list_page_size: PositiveInt = LIST_PAGE_SIZE


_ALIASES = {"service_account_json": "credentials_json", "project_id": "project"}
_KNOWN = frozenset(GcsSettings.model_fields) | frozenset(_ALIASES)


def parse_settings(rest: str, options: Mapping[str, object] | None) -> tuple[str, str, GcsSettings]:
    """Validate ``gs:rest`` and its options: ``(bucket, prefix, settings)``."""
    base, merged = merge_query(
        rest,
        options,
        secrets=_SECRETS,
        known=_KNOWN,
        secret_message="the gs location carries the secret option {key} in its query string",
        secret_hint="put the key in the destination's config block, or name its file with "
        "credentials_file or GOOGLE_APPLICATION_CREDENTIALS",
        unknown_message="unknown option(s) for a gs location: {keys}",
    )
    check_aliases(_ALIASES, merged)
    try:
        settings = GcsSettings.model_validate(merged)
    except ValidationError as exc:
        raise settings_error(exc, "gs") from None
    bucket, prefix = _parse_path(base)
    return bucket, prefix, settings


def _parse_path(base: str) -> tuple[str, str]:
    bucket, prefix = split_path(base)
    if not bucket:
        raise ConfigError("the gs location names no bucket", hint="write gs:BUCKET/prefix")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"{bucket!r} is not a valid Cloud Storage bucket name",
            hint="use 3-63 lowercase letters, digits, '-', '_' and '.', starting and "
            "ending with a letter or digit",
        )
    check_prefix("gs", prefix)
    return bucket, f"{prefix}/" if prefix else ""
