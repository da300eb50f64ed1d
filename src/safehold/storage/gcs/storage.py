"""Google Cloud Storage (and GCS emulators) as storage.

Location: ``gs:BUCKET/PREFIX`` (``gs://BUCKET/PREFIX`` is accepted too). An object ``a/b``
is the GCS object ``PREFIX/a/b`` in ``BUCKET``.

**Credentials**, first match wins: the ``credentials_json`` option (a service-account key,
inline), the ``credentials_file`` option, the file named by ``GOOGLE_APPLICATION_CREDENTIALS``;
then, when an emulator endpoint is set (the ``endpoint`` option or ``STORAGE_EMULATOR_HOST``),
no credentials at all; otherwise Google's application-default credentials (``gcloud auth
application-default login``, or the metadata server on Google Cloud). A key is checked when
the location is opened, so a malformed or wrong-type key is a :class:`ConfigError` before any
request; its content never reaches a message or a ``repr``.

**Guarantees.** An upload is atomic (an object appears whole when its upload completes).
Exclusive create sends ``ifGenerationMatch=0``, which the service checks atomically. Ranged
reads send a ``Range`` header, so only the range travels. Listing follows page tokens.

**Errors.** The SDK's own retries are off (``retry=None`` on every call): retrying lives in
:class:`~safehold.storage.wrappers.RetryingStorage` alone. Timeouts, refused or reset
connections, 408, 429 and 5xx answers are :class:`TransientStorageError`; 401/403 are
:class:`StoragePermissionDenied` with a hint naming where the credentials came from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TypeVar

import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.cloud import storage as gcs  # type: ignore[import-untyped]  # no type information

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
from safehold.storage.common import check_length, check_range, empty_read, past_end, short_read
from safehold.storage.gcs.client import auth as find_auth
from safehold.storage.gcs.client import endpoint, open_client
from safehold.storage.gcs.errors import SDK_ERRORS, Context, translate
from safehold.storage.gcs.settings import LIST_PAGE_SIZE, parse_settings

__all__ = ["GcsStorage", "from_location"]

T = TypeVar("T")


# --- the backend -------------------------------------------------------------------------


class GcsStorage:
    """Objects under a prefix of one bucket. See the module docstring."""

    def __init__(
        self,
        client: gcs.Client,
        bucket: str,
        prefix: str = "",
        *,
        credential_source: str = "the configured credentials",
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        list_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self._client = client
        self._bucket = client.bucket(bucket)
        self._bucket_name = bucket
        self._prefix = prefix
        self._where = f"gs:{bucket}/{prefix.rstrip('/')}".rstrip("/")
        self._credential_source = credential_source
        self._timeout = (connect_timeout, read_timeout)
        self._endpoint = str(getattr(client, "api_endpoint", None) or "Cloud Storage")
        self._page_size = list_page_size
        self._context = Context(
            where=self._where,
            endpoint=self._endpoint,
            bucket=bucket,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            credential_source=credential_source,
        )

    def __repr__(self) -> str:
        return f"GcsStorage({self._where!r})"

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._client.close()

    def _blob(self, name: str) -> gcs.Blob:
        return self._bucket.blob(self._prefix + check_name(name))

    def server_time(self) -> datetime | None:
        """The service's clock (storage.capabilities.ServerClock): the ``Date`` header of a listing
        of at most one name, also of an error answer (the same server's clock). The SDK
        hides response headers, so the request goes through the client's own authorized
        session."""
        url = self._client._connection.build_api_url(
            f"/b/{self._bucket_name}/o",
            {"maxResults": 1, "prefix": self._prefix, "fields": "kind"},
        )
        started = time.monotonic()
        try:
            response = self._client._http.request("GET", url, timeout=self._timeout)
        except (requests.RequestException, google.auth.exceptions.GoogleAuthError, OSError):
            return None
        ended = time.monotonic()
        stamp = http_date(response.headers.get("Date"))
        return None if stamp is None else clock_reading(stamp, started, ended, resolution=1.0)

    def _call(self, action: str, call: Callable[[], T], *, missing: str = "") -> T:
        try:
            return call()
        except SDK_ERRORS as exc:
            raise translate(exc, self._context, action, missing=missing) from exc

    # --- bucket -----------------------------------------------------------------------------

    def ensure_bucket(self, *, create: bool, project: str | None) -> None:
        """Make sure the bucket exists, creating it when ``create`` allows."""
        # Listing needs only the object permissions a repository needs anyway, where
        # looking the bucket up would need storage.buckets.get as well.
        if self._call("look up the bucket", self._bucket_exists):
            return
        if not create:
            raise StorageError(
                f"{self._where}: the bucket {self._bucket_name!r} does not exist",
                hint="create it, check the name, or set create_bucket: true",
            )
        try:
            self._client.create_bucket(
                self._bucket, project=project, retry=None, timeout=self._timeout
            )
        except api_exceptions.Conflict:
            return  # created meanwhile by someone else (or owned by another project)
        except ValueError:
            # The client needs a project to create a bucket in.
            raise ConfigError(
                f"{self._where}: creating the bucket needs a project",
                hint="set the project option (or GOOGLE_CLOUD_PROJECT), or create the bucket",
            ) from None
        except SDK_ERRORS as exc:
            error = translate(exc, self._context, "create the bucket")
            if isinstance(error, StoragePermissionDenied):
                raise StoragePermissionDenied(
                    f"{self._where}: the bucket {self._bucket_name!r} does not exist and the "
                    "credentials may not create it",
                    hint="create the bucket (`gcloud storage buckets create`) or give the "
                    f"account from {self._credential_source} the Storage Admin role",
                ) from exc
            raise error from exc

    def _bucket_exists(self) -> bool:
        try:
            blobs = self._client.list_blobs(
                self._bucket_name, max_results=1, retry=None, timeout=self._timeout
            )
            next(iter(blobs.pages), None)
        except api_exceptions.NotFound:
            return False
        return True

    # --- operations -------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        blob = self._blob(name)
        # The SDK wants bytes; the copy also frees the caller's buffer for reuse at once.
        payload = data if isinstance(data, bytes) else bytes(data)
        try:
            blob.upload_from_string(
                payload,
                content_type="application/octet-stream",
                # 0 means "only if no live object has this name", checked atomically.
                if_generation_match=0 if exclusive else None,
                retry=None,
                timeout=self._timeout,
            )
        except api_exceptions.PreconditionFailed:
            raise ObjectExists(f"{self._where}: object {name!r} already exists") from None
        except SDK_ERRORS as exc:
            raise translate(exc, self._context, f"write {name!r}", missing="bucket") from exc

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        blob = self._blob(name)
        check_range(offset, length)
        if length == 0:
            # There is no empty range; the object must still exist and be long enough.
            return empty_read(lambda: self.stat(name).size, self._where, name, offset)
        whole = offset == 0 and length is None
        try:
            data = blob.download_as_bytes(
                start=None if whole else offset,
                end=None if length is None else offset + length - 1,  # inclusive
                raw_download=True,  # the stored bytes, never a decompressed copy
                # Checksums cover whole objects only; a range cannot be checked.
                checksum="auto" if whole else None,
                retry=None,
                timeout=self._timeout,
            )
        except api_exceptions.RequestRangeNotSatisfiable:
            return past_end(lambda: self._stat_again(name).size, self._where, name, offset, length)
        except requests.ConnectionError as exc:
            # fake-gcs-server drops the connection for a range starting past the end (GCS
            # answers 416); a stat tells a short object from a real network failure.
            known = self._size_or_none(name)
            if known is not None and offset > known:
                raise short_read(self._where, name, known, offset, length) from None
            raise translate(exc, self._context, f"read {name!r}", missing="object") from exc
        except SDK_ERRORS as exc:
            raise translate(exc, self._context, f"read {name!r}", missing="object") from exc
        check_length(self._where, name, data, offset, length)
        return bytes(data)

    def _size_or_none(self, name: str) -> int | None:
        try:
            return self._stat_again(name).size
        except StorageError:
            return None

    def _stat_again(self, name: str) -> ObjectInfo:
        """``stat`` right after a failed read. A server may close the connection after an
        error answer (fake-gcs-server does after a 416) and the pool can hand out that dead
        connection once: a transient failure is tried once more, on a fresh one."""
        try:
            return self.stat(name)
        except TransientStorageError:
            return self.stat(name)

    def stat(self, name: str) -> ObjectInfo:
        blob = self._call(
            f"stat {name!r}",
            lambda: self._bucket.get_blob(
                self._prefix + check_name(name), retry=None, timeout=self._timeout
            ),
            missing="object",
        )
        if blob is None:  # get_blob answers None for a missing object (or bucket)
            raise ObjectNotFound(f"{self._where}: cannot stat {name!r}: no such object")
        return ObjectInfo(name, int(blob.size or 0))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        strip = len(self._prefix)
        blobs = self._client.list_blobs(
            self._bucket_name,
            prefix=self._prefix + prefix,
            page_size=self._page_size,
            fields="items(name,size),nextPageToken",  # only what we use: smaller pages
            retry=None,
            timeout=self._timeout,
        )
        pages = iter(blobs.pages)
        while True:
            try:
                page = next(pages, None)
                if page is None:
                    return
                found = [ObjectInfo(b.name[strip:], int(b.size or 0)) for b in page]
            except api_exceptions.NotFound:
                return  # no bucket: nothing stored yet (as a local folder that does not exist)
            except SDK_ERRORS as exc:
                raise translate(exc, self._context, f"list {prefix or '/'}") from exc
            yield from found

    def delete(self, name: str) -> None:
        blob = self._blob(name)
        self._call(
            f"delete {name!r}",
            lambda: blob.delete(retry=None, timeout=self._timeout),
            missing="object",
        )


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> GcsStorage:
    """Open ``gs:rest``; with ``create`` (repository init) make the bucket if allowed."""
    bucket, prefix, settings = parse_settings(rest, options)
    found = endpoint(settings, os.environ)
    auth = find_auth(settings, os.environ, found)
    client = open_client(auth, found)
    storage = GcsStorage(
        client,
        bucket,
        prefix,
        credential_source=auth.source,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        list_page_size=settings.list_page_size,
    )
    if create:
        try:
            storage.ensure_bucket(create=settings.create_bucket, project=auth.project)
        except BaseException:
            storage.close()
            raise
    return storage
