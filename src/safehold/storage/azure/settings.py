"""The settings of an Azure location: ``azure:CONTAINER/PREFIX`` and its options, validated.

Options may also ride in the location's query string, except secrets: a location ends up in
shell history, process lists and logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

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

__all__ = ["LIST_PAGE_SIZE", "AzureSettings", "Target", "parse_settings"]

#: Options that hold secrets: accepted in a config block, refused in a location's query
#: string (which ends up in shell history, process lists and logs).
_SECRETS = frozenset({"account_key", "storage_access_key", "sas_token", "connection_string"})
# 3-63 characters, lowercase letters, digits and single hyphens, starting and ending with a
# letter or digit (the service's rule); "$root" is the account's root container.
_CONTAINER = re.compile(r"^(?:\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
#: The service's own default is 5000 names a page; smaller pages bound each reply's size.
LIST_PAGE_SIZE = 1000


class AzureSettings(BaseModel):
    """A destination block's keys for an Azure location (the names of the seeds work too)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    account_name: str | None = Field(
        default=None, validation_alias=AliasChoices("account_name", "storage_account")
    )
    account_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("account_key", "storage_access_key")
    )
    sas_token: SecretStr | None = None
    connection_string: SecretStr | None = None
    #: A full account URL (``https://acct.blob.core.windows.net``,
    #: ``http://127.0.0.1:10000/devstoreaccount1``) or a base domain (``core.chinacloudapi.cn``).
    endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("endpoint", "blob_store_base_url")
    )
    create_container: bool = True
    connect_timeout: PositiveFloat = 10.0
    read_timeout: PositiveFloat = 60.0
    list_page_size: PositiveInt = LIST_PAGE_SIZE


_ALIASES = {"storage_account": "account_name", "storage_access_key": "account_key",
            "blob_store_base_url": "endpoint"}  # fmt: skip
_KNOWN = frozenset(AzureSettings.model_fields) | frozenset(_ALIASES)


@dataclass(frozen=True)
class Target:
    """Where the location points, parsed from ``CONTAINER/PREFIX``."""

    container: str
    prefix: str  # "" or "some/path/" (ends with '/')

    def describe(self) -> str:
        """The location for messages: ``azure:CONTAINER/PREFIX``."""
        return f"azure:{self.container}/{self.prefix.rstrip('/')}".rstrip("/")


def parse_settings(
    rest: str, options: Mapping[str, object] | None
) -> tuple[str, str, AzureSettings]:
    """Validate ``azure:rest`` and its options: ``(container, prefix, settings)``."""
    base, merged = merge_query(
        rest,
        options,
        secrets=_SECRETS,
        known=_KNOWN,
        secret_message="the azure location carries the secret option {key} in its query string",
        secret_hint="put credentials in the destination's config block or in the "
        "AZURE_STORAGE_* environment variables, never in the location",
        unknown_message="unknown option(s) for an azure location: {keys}",
    )
    check_aliases(_ALIASES, merged)
    try:
        settings = AzureSettings.model_validate(merged)
    except ValidationError as exc:
        raise settings_error(exc, "azure") from None
    container, prefix = _parse_path(base)
    return container, prefix, settings


def _parse_path(base: str) -> tuple[str, str]:
    container, prefix = split_path(base)
    if not container:
        raise ConfigError(
            "the azure location names no container", hint="write azure:CONTAINER/prefix"
        )
    if not _CONTAINER.match(container):
        raise ConfigError(
            f"{container!r} is not a valid Azure container name",
            hint="use 3-63 lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit",
        )
    check_prefix("azure", prefix)
    return container, f"{prefix}/" if prefix else ""
