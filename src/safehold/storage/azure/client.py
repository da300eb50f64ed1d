"""The SDK client of an Azure location: credentials, the account URL, the service client.

Credentials, first match wins: the ``connection_string`` option; ``account_name`` with
``account_key`` or ``sas_token``; then the environment variables the Azure CLI reads
(see the package docstring). Nothing here ever puts a secret into a message.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure.storage.blob import BlobServiceClient
from pydantic import SecretStr

from safehold.errors import ConfigError
from safehold.storage.azure.settings import AzureSettings

__all__ = ["Credentials", "credentials", "service_client"]


@dataclass(frozen=True)
class Credentials:
    """What to hand the SDK; ``source`` names where it came from (for hints, no values)."""

    source: str
    connection_string: str | None = None
    account_name: str | None = None
    account_key: str | None = None
    sas_token: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(source={self.source!r})"


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


def credentials(settings: AzureSettings, env: Mapping[str, str]) -> Credentials:
    """The credentials to use: the destination's options first, then the ``AZURE_STORAGE_*``
    environment variables; raises :class:`ConfigError` when there are none or two kinds."""
    conn = _secret(settings.connection_string)
    key = _secret(settings.account_key)
    sas = _secret(settings.sas_token)
    account = settings.account_name
    if conn:
        return Credentials("the connection_string option", connection_string=conn)
    if key or sas:
        if key and sas:
            raise ConfigError("give account_key or sas_token, not both")
        found = Credentials(
            f"the {'account_key' if key else 'sas_token'} option",
            account_name=account or env.get("AZURE_STORAGE_ACCOUNT") or None,
            account_key=key,
            sas_token=sas,
        )
    elif env.get("AZURE_STORAGE_CONNECTION_STRING"):
        return Credentials(
            "the AZURE_STORAGE_CONNECTION_STRING environment variable",
            connection_string=env["AZURE_STORAGE_CONNECTION_STRING"],
        )
    elif env.get("AZURE_STORAGE_KEY") or env.get("AZURE_STORAGE_SAS_TOKEN"):
        from_env = (
            "AZURE_STORAGE_KEY" if env.get("AZURE_STORAGE_KEY") else "AZURE_STORAGE_SAS_TOKEN"
        )
        found = Credentials(
            f"the {from_env} environment variable",
            account_name=account or env.get("AZURE_STORAGE_ACCOUNT") or None,
            account_key=env.get("AZURE_STORAGE_KEY") or None,
            sas_token=None if env.get("AZURE_STORAGE_KEY") else env["AZURE_STORAGE_SAS_TOKEN"],
        )
    else:
        raise ConfigError(
            "no Azure credentials: the location needs an account key, a SAS token or a "
            "connection string",
            hint="set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with "
            "AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (or the account_name, account_key, "
            "sas_token, connection_string options of the destination)",
        )
    if found.account_key is not None:
        if not found.account_name:
            raise ConfigError(
                "an Azure account key needs the account name",
                hint="set account_name (or AZURE_STORAGE_ACCOUNT)",
            )
        try:
            base64.b64decode(found.account_key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(
                f"the Azure account key from {found.source} is not valid base64",
                hint="copy the key again from the portal (Access keys) or `az storage "
                "account keys list`",
            ) from None
    return found


def _account_url(settings: AzureSettings, creds: Credentials) -> str:
    endpoint = (settings.endpoint or "").strip().rstrip("/")
    if "://" in endpoint:
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError("the azure endpoint must start with http:// or https://")
        if "?" in endpoint or "@" in endpoint:
            raise ConfigError(
                "the azure endpoint carries a query string or credentials",
                hint="give the bare account URL; put a SAS token in sas_token",
            )
        return endpoint
    if not creds.account_name:
        raise ConfigError(
            "the Azure account name is missing",
            hint="set account_name (or AZURE_STORAGE_ACCOUNT), or give endpoint as a full URL",
        )
    # A bare domain is the base of a sovereign or on-premise cloud (the seeds'
    # blob_store_base_url): https://ACCOUNT.blob.DOMAIN.
    domain = endpoint or "core.windows.net"
    if not domain.startswith("blob."):
        domain = f"blob.{domain}"
    return f"https://{creds.account_name}.{domain}"


def service_client(settings: AzureSettings, creds: Credentials) -> BlobServiceClient:
    """A blob service client for ``creds``, with the SDK's own retries off (only
    ``RetryingStorage`` retries) and the settings' time-outs."""
    transport: dict[str, Any] = {
        "retry_total": 0,  # RetryingStorage alone retries (STYLE.md, habit 3)
        "connection_timeout": settings.connect_timeout,
        "read_timeout": settings.read_timeout,
    }
    if creds.connection_string is not None:
        if settings.endpoint:
            raise ConfigError(
                "give either a connection string or an endpoint, not both",
                hint="a connection string names its endpoint itself (BlobEndpoint=...)",
            )
        try:
            return BlobServiceClient.from_connection_string(creds.connection_string, **transport)
        except ValueError:
            raise ConfigError(
                f"the Azure connection string from {creds.source} is malformed",
                hint="copy it again from the portal (Access keys); it looks like "
                "DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...",
            ) from None
    url = _account_url(settings, creds)
    credential: str | dict[str, str]
    if creds.account_key is not None and creds.account_name is not None:
        credential = {"account_name": creds.account_name, "account_key": creds.account_key}
    else:
        credential = (creds.sas_token or "").lstrip("?")
    return BlobServiceClient(url, credential=credential, **transport)
