"""Azure Blob Storage (and Azurite, and on-premise Azure-compatible stores) as storage.

Location: ``azure:CONTAINER/PREFIX`` (``azure://CONTAINER/PREFIX`` is accepted too). An
object ``a/b`` is the block blob ``PREFIX/a/b`` in ``CONTAINER``.

**Credentials**, first match wins: the ``connection_string`` option; ``account_name`` with
``account_key`` or ``sas_token``; then the environment variables the Azure CLI reads,
``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT`` with ``AZURE_STORAGE_KEY``
or ``AZURE_STORAGE_SAS_TOKEN``. Secrets are :class:`~pydantic.SecretStr` (masked in
``repr``), are refused in a location's query string, and never reach a message: SDK error
texts can quote request URLs, whose query holds a SAS signature, so messages are built
from status codes and error codes only (see :mod:`safehold.storage.azure.errors`).

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

import os
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, NoReturn

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient

from safehold.errors import (
    ObjectExists,
    StorageError,
    StoragePermissionDenied,
)
from safehold.model import ObjectInfo
from safehold.storage.azure.client import credentials, service_client
from safehold.storage.azure.errors import SDK_ERRORS, Context, translate
from safehold.storage.azure.settings import AzureSettings, Target, parse_settings
from safehold.storage.base import check_name, clock_reading, http_date
from safehold.storage.common import check_length, check_range, empty_read, past_end

__all__ = ["AzureStorage", "from_location"]


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
        self._target = Target(container, prefix)
        self._where = self._target.describe()
        # scheme://host[/account]: never service.url, which carries a SAS token.
        self._endpoint = f"{service.scheme}://{service.primary_hostname}"
        # The service client was built from the same settings (timeouts, for messages).
        self._settings = settings or AzureSettings()
        self._credential_source = credential_source
        self._context = Context(
            where=self._where,
            endpoint=self._endpoint,
            container=container,
            connect_timeout=self._settings.connect_timeout,
            read_timeout=self._settings.read_timeout,
            credential_source=credential_source,
        )

    def __repr__(self) -> str:
        return f"AzureStorage({self._where!r}, endpoint={self._endpoint!r})"

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._service.close()

    def _key(self, name: str) -> str:
        return self._target.prefix + check_name(name)

    def server_time(self) -> datetime | None:
        """The service's clock (storage.capabilities.ServerClock): the ``Date`` header of the answer
        to a Get Container Properties, also an error answer (the same server's clock)."""
        dates: list[str] = []

        def keep_date(response: Any) -> None:
            dates.append(str(response.http_response.headers.get("Date") or ""))

        started = time.monotonic()
        try:
            self._container.get_container_properties(raw_response_hook=keep_date)
        except SDK_ERRORS:
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
            except SDK_ERRORS as exc:
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
        except SDK_ERRORS as exc:
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
        except SDK_ERRORS as exc:
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
        except SDK_ERRORS as exc:
            self._raise(exc, f"read {name!r}", missing="object")
        check_length(self._where, name, data, offset, length)
        return data

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            props = self._container.get_blob_client(key).get_blob_properties()
        except SDK_ERRORS as exc:
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
        except SDK_ERRORS as exc:
            self._raise(exc, f"list {prefix or '/'}")

    def delete(self, name: str) -> None:
        key = self._key(name)
        try:
            self._container.delete_blob(key)
        except SDK_ERRORS as exc:
            self._raise(exc, f"delete {name!r}", missing="object")

    # --- errors ---------------------------------------------------------------------------
    def _raise(self, exc: BaseException, action: str, *, missing: str = "") -> NoReturn:
        raise translate(exc, self._context, action, missing=missing) from exc


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> AzureStorage:
    """Open ``azure:rest``; with ``create`` (repository init) make the container if allowed."""
    container, prefix, settings = parse_settings(rest, options)
    creds = credentials(settings, os.environ)
    storage = AzureStorage(
        service_client(settings, creds),
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
