"""Azure Blob Storage (and Azurite, and on-premise Azure-compatible stores) as storage.

Location: ``azure:CONTAINER/PREFIX`` (``azure://CONTAINER/PREFIX`` is accepted too). An
object ``a/b`` is the block blob ``PREFIX/a/b`` in ``CONTAINER``.

**Credentials**, first match wins: the ``connection_string`` option; ``account_name`` with
``account_key`` or ``sas_token``; then the environment variables the Azure CLI reads,
``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT`` with ``AZURE_STORAGE_KEY``
or ``AZURE_STORAGE_SAS_TOKEN``. Secrets are :class:`~pydantic.SecretStr` (masked in
``repr``), are refused in a location's query string, and never reach a message: SDK error
texts can quote request URLs, whose query holds a SAS signature, so messages are built
from status codes and error codes only (:func:`_scrub` guards the rest).

**Guarantees.** A Put Blob is atomic (a blob becomes visible whole, or not at all; blobs
above the SDK's single-put limit are staged as blocks and appear at the atomic commit).
Exclusive create sends ``If-None-Match: *``, which the service checks atomically. Ranged
reads send ``x-ms-range``, so only the range travels. Listing is flat and follows the
service's continuation markers page by page.

**Errors.** The SDK's own retries are off (``retry_total=0``): retrying lives in
:class:`~safehold.storage.wrappers.RetryingStorage` alone. Timeouts, refused or reset
connections, 408, 429 and 5xx answers are :class:`TransientStorageError`; 401/403 are
:class:`StoragePermissionDenied` with a hint naming where the credentials came from.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient
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

from safehold.errors import (
    ConfigError,
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.model import ObjectInfo
from safehold.storage.base import check_name, clock_reading, http_date
from safehold.storage.common import (
    check_aliases,
    check_length,
    check_prefix,
    check_range,
    empty_read,
    merge_query,
    past_end,
    settings_error,
    split_path,
    status_error,
)

__all__ = ["AzureSettings", "AzureStorage", "from_location", "parse_settings"]

#: Options that hold secrets: accepted in a config block, refused in a location's query
#: string (which ends up in shell history, process lists and logs).
_SECRETS = frozenset({"account_key", "storage_access_key", "sas_token", "connection_string"})
# 3-63 characters, lowercase letters, digits and single hyphens, starting and ending with a
# letter or digit (the service's rule); "$root" is the account's root container.
_CONTAINER = re.compile(r"^(?:\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
# Whatever follows a '?' in an SDK message may be a SAS token; an account key never
# appears in requests, only signatures made with it.
_QUERY = re.compile(r"\?[^\s'\"]*")
_SIG = re.compile(r"(sig=)[^&\s'\"]+", re.IGNORECASE)
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
class _Target:
    """Where the location points, parsed from ``CONTAINER/PREFIX``."""

    container: str
    prefix: str  # "" or "some/path/" (ends with '/')

    def describe(self) -> str:
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


# --- credentials -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Credentials:
    """What to hand the SDK; ``source`` names where it came from (for hints, no values)."""

    source: str
    connection_string: str | None = None
    account_name: str | None = None
    account_key: str | None = None
    sas_token: str | None = None

    def __repr__(self) -> str:
        return f"_Credentials(source={self.source!r})"


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None and value.get_secret_value() else None


def _credentials(settings: AzureSettings, env: Mapping[str, str]) -> _Credentials:
    conn = _secret(settings.connection_string)
    key = _secret(settings.account_key)
    sas = _secret(settings.sas_token)
    account = settings.account_name
    if conn:
        return _Credentials("the connection_string option", connection_string=conn)
    if key or sas:
        if key and sas:
            raise ConfigError("give account_key or sas_token, not both")
        found = _Credentials(
            f"the {'account_key' if key else 'sas_token'} option",
            account_name=account or env.get("AZURE_STORAGE_ACCOUNT") or None,
            account_key=key,
            sas_token=sas,
        )
    elif env.get("AZURE_STORAGE_CONNECTION_STRING"):
        return _Credentials(
            "the AZURE_STORAGE_CONNECTION_STRING environment variable",
            connection_string=env["AZURE_STORAGE_CONNECTION_STRING"],
        )
    elif env.get("AZURE_STORAGE_KEY") or env.get("AZURE_STORAGE_SAS_TOKEN"):
        from_env = (
            "AZURE_STORAGE_KEY" if env.get("AZURE_STORAGE_KEY") else "AZURE_STORAGE_SAS_TOKEN"
        )
        found = _Credentials(
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


def _account_url(settings: AzureSettings, creds: _Credentials) -> str:
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


def _service_client(settings: AzureSettings, creds: _Credentials) -> BlobServiceClient:
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


# --- the backend -----------------------------------------------------------------------


class AzureStorage:
    """Objects as block blobs under a prefix of one container. See the module docstring."""

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        prefix: str = "",
        *,
        settings: AzureSettings | None = None,
        credential_source: str = "the configured credentials",
    ) -> None:
        self._service = service
        self._container: ContainerClient = service.get_container_client(container)
        self._target = _Target(container, prefix)
        self._where = self._target.describe()
        # scheme://host[/account]: never service.url, which carries a SAS token.
        self._endpoint = f"{service.scheme}://{service.primary_hostname}"
        # The service client was built from the same settings (timeouts, for messages).
        self._settings = settings or AzureSettings()
        self._credential_source = credential_source

    def __repr__(self) -> str:
        return f"AzureStorage({self._where!r}, endpoint={self._endpoint!r})"

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._service.close()

    def _key(self, name: str) -> str:
        return self._target.prefix + check_name(name)

    def server_time(self) -> datetime | None:
        """The service's clock (storage.base.ServerClock): the ``Date`` header of the answer
        to a Get Container Properties, also an error answer (the same server's clock)."""
        dates: list[str] = []

        def keep_date(response: Any) -> None:
            dates.append(str(response.http_response.headers.get("Date") or ""))

        started = time.monotonic()
        try:
            self._container.get_container_properties(raw_response_hook=keep_date)
        except AzureError:
            pass  # an answer still carries the server's Date; no answer leaves none
        ended = time.monotonic()
        stamp = http_date(dates[-1]) if dates else None
        return None if stamp is None else clock_reading(stamp, started, ended, resolution=1.0)

    # --- container ------------------------------------------------------------------------

    def ensure_container(self, *, create: bool) -> None:
        """Make sure the container exists, creating it when ``create`` allows."""
        if create:
            try:
                self._container.create_container()
                return
            except ResourceExistsError:
                return
            except AzureError as exc:
                if getattr(exc, "status_code", None) not in (401, 403):
                    self._raise(exc, "create the container")
                # Credentials that may not create containers may still use this one.
        try:
            next(iter(self._container.list_blobs(results_per_page=1).by_page()), None)
        except ResourceNotFoundError:
            if create:
                raise StoragePermissionDenied(
                    f"{self._where}: the container {self._target.container!r} does not exist "
                    "and these credentials may not create it",
                    hint=f"create the container (for example `az storage container create`) "
                    f"or use credentials from {self._credential_source} that may create it",
                ) from None
            raise StorageError(
                f"{self._where}: the container {self._target.container!r} does not exist "
                f"at {self._endpoint}",
                hint="create it, check the name, or set create_container: true",
            ) from None
        except AzureError as exc:
            self._raise(exc, "look up the container")

    # --- operations -----------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        key = self._key(name)
        # The SDK wants bytes; the copy also frees the caller's buffer for reuse at once.
        payload = data if isinstance(data, bytes) else bytes(data)
        try:
            # overwrite=False sends If-None-Match: * (an atomic create-only write).
            self._container.upload_blob(
                key, payload, overwrite=not exclusive, length=len(payload), max_concurrency=1
            )
        except ResourceExistsError as exc:
            if exclusive:
                raise ObjectExists(f"{self._where}: object {name!r} already exists") from None
            self._raise(exc, f"write {name!r}")
        except AzureError as exc:
            self._raise(exc, f"write {name!r}", missing="container")

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self._key(name)
        check_range(offset, length)
        if length == 0:
            # The service has no empty range; the object must still exist and be long enough.
            return empty_read(lambda: self.stat(name).size, self._where, name, offset)
        blob = self._container.get_blob_client(key)
        try:
            if offset == 0 and length is None:
                data = blob.download_blob(max_concurrency=1).readall()
            else:
                data = blob.download_blob(offset=offset, length=length, max_concurrency=1).readall()
        except HttpResponseError as exc:
            if exc.status_code != 416:
                self._raise(exc, f"read {name!r}", missing="object")
            return past_end(lambda: self.stat(name).size, self._where, name, offset, length)
        except AzureError as exc:
            self._raise(exc, f"read {name!r}", missing="object")
        check_length(self._where, name, data, offset, length)
        return data

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            props = self._container.get_blob_client(key).get_blob_properties()
        except AzureError as exc:
            self._raise(exc, f"stat {name!r}", missing="object")
        return ObjectInfo(name, int(props.size))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        strip = len(self._target.prefix)
        pages = self._container.list_blobs(
            name_starts_with=self._target.prefix + prefix,
            results_per_page=self._settings.list_page_size,
        ).by_page()
        try:
            for page in pages:
                for blob in page:
                    yield ObjectInfo(blob.name[strip:], int(blob.size))
        except ResourceNotFoundError:
            return  # no container: nothing stored yet (as a local folder that does not exist)
        except AzureError as exc:
            self._raise(exc, f"list {prefix or '/'}")

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._container.delete_blob(key)
        except AzureError as exc:
            self._raise(exc, f"delete {name!r}", missing="object")

    # --- errors ---------------------------------------------------------------------------

    def _raise(self, exc: AzureError, action: str, *, missing: str = "") -> NoReturn:
        raise self._translate(exc, action, missing=missing) from exc

    def _no_answer(self, exc: AzureError) -> str:
        """What went wrong when no HTTP answer came, naming the timeout that struck."""
        endpoint = self._endpoint
        if isinstance(exc, ServiceRequestTimeoutError):
            return (
                f"{endpoint} did not accept a connection in time "
                f"(connect_timeout={self._settings.connect_timeout:g} s)"
            )
        if isinstance(exc, ServiceResponseTimeoutError):
            return (
                f"{endpoint} did not answer in time "
                f"(read_timeout={self._settings.read_timeout:g} s)"
            )
        if isinstance(exc, ServiceRequestError):
            return f"cannot connect to {endpoint} ({_scrub(exc)})"
        return f"the connection to {endpoint} broke ({_scrub(exc)})"

    def _translate(self, exc: AzureError, action: str, *, missing: str) -> StorageError:
        """One SDK exception as a safehold storage error (see the module docstring)."""
        where = self._where
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return TransientStorageError(
                f"{where}: could not {action}: {self._no_answer(exc)}; may be temporary"
            )
        if isinstance(exc, DecodeError):
            # The answer was cut short or garbled in transit (IncompleteReadError...).
            return TransientStorageError(
                f"{where}: could not {action}: the answer from {self._endpoint} was cut "
                f"short ({type(exc).__name__}); may be temporary"
            )
        status = getattr(exc, "status_code", None)
        code = _code(exc)
        detail = f"HTTP {status}{f' {code}' if code else ''}" if status else type(exc).__name__
        if isinstance(exc, ResourceNotFoundError) or status == 404:
            if code == "ContainerNotFound" or missing == "container":
                text = f"the container {self._target.container!r} does not exist"
                if missing == "object":
                    return ObjectNotFound(f"{where}: cannot {action}: {text}")
                return StorageError(
                    f"{where}: could not {action}: {text}",
                    hint="run `safehold init` to create it, or check the container name",
                )
            return ObjectNotFound(f"{where}: cannot {action}: no such object")
        if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
            if code.startswith(("AuthorizationPermission", "AuthorizationResourceType")):
                return StoragePermissionDenied(
                    f"{where}: permission denied: could not {action} ({detail})",
                    hint=f"the credentials from {self._credential_source} may not do this; "
                    "give the SAS token or the account role the missing permission",
                )
            return StoragePermissionDenied(
                f"{where}: authentication failed: could not {action} ({detail})",
                hint=f"check the account name and key (or SAS token) from "
                f"{self._credential_source}, and that a SAS token has not expired",
            )
        if status is None:
            # Decoding errors, broken streams: the transfer was cut, worth another try.
            return TransientStorageError(f"{where}: could not {action} ({_scrub(exc)})")
        return status_error(where, action, status, detail)


def _code(exc: AzureError) -> str:
    code = getattr(exc, "error_code", None)
    # error_code is a str enum (StorageErrorCode) or a plain string from the header.
    return str(getattr(code, "value", code) or "")


def _scrub(exc: BaseException) -> str:
    """A one-line description of ``exc`` without query strings (SAS signatures)."""
    text = str(getattr(exc, "message", None) or exc).splitlines()[0] if str(exc) else ""
    text = _SIG.sub(r"\1***", _QUERY.sub("?***", text))
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> AzureStorage:
    """Open ``azure:rest``; with ``create`` (repository init) make the container if allowed."""
    container, prefix, settings = parse_settings(rest, options)
    creds = _credentials(settings, os.environ)
    storage = AzureStorage(
        _service_client(settings, creds),
        container,
        prefix,
        settings=settings,
        credential_source=creds.source,
    )
    if create:
        try:
            storage.ensure_container(create=settings.create_container)
        except BaseException:
            storage.close()
            raise
    return storage
