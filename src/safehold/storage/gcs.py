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

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import google.auth
import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage as gcs  # type: ignore[import-untyped]  # no type information
from google.cloud.storage import exceptions as gcs_exceptions  # type: ignore[import-untyped]
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
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
    short_read,
    split_path,
    status_error,
)

__all__ = ["GcsSettings", "GcsStorage", "from_location", "parse_settings"]

T = TypeVar("T")

SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
#: Options holding secrets: accepted in a config block, refused in a location's query.
_SECRETS = frozenset({"credentials_json", "service_account_json"})
# 3-63 characters (up to 222 with dots), lowercase letters, digits, '-', '_' and '.',
# starting and ending with a letter or digit (the service's rule, loosely).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
# Key types this backend loads, each with its own loader (google-auth warns against its
# generic loader for configurations from outside: it would accept any type).
_CREDENTIAL_TYPES = ("service_account", "authorized_user")
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")
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


# --- credentials -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Auth:
    credentials: Credentials
    project: str | None
    source: str  # where the credentials came from, for hints (never their content)


def _endpoint(settings: GcsSettings, env: Mapping[str, str]) -> str | None:
    endpoint = (settings.endpoint or env.get("STORAGE_EMULATOR_HOST") or "").strip().rstrip("/")
    if not endpoint:
        return None
    if not endpoint.startswith(("http://", "https://")):
        # STORAGE_EMULATOR_HOST is often written as host:port.
        endpoint = f"http://{endpoint}"
    return endpoint


def _auth(settings: GcsSettings, env: Mapping[str, str], endpoint: str | None) -> _Auth:
    inline = settings.credentials_json
    if inline is not None:
        text = inline.get_secret_value() if isinstance(inline, SecretStr) else inline
        return _load_key(text, "the credentials_json option", settings.project)
    path = settings.credentials_file or env.get("GOOGLE_APPLICATION_CREDENTIALS") or ""
    if path:
        source = (
            f"the credentials_file option ({path})"
            if settings.credentials_file
            else f"GOOGLE_APPLICATION_CREDENTIALS ({path})"
        )
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the Google credentials file named by {source}: "
                f"{getattr(exc, 'strerror', None) or type(exc).__name__}",
                hint="give the path of a service-account key file (JSON)",
            ) from None
        return _load_key(text, source, settings.project)
    project = settings.project or env.get("GOOGLE_CLOUD_PROJECT") or None
    if endpoint is not None:
        # An emulator checks no credentials; sending none keeps every request (and every
        # token refresh) away from Google.
        anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return _Auth(anonymous, project, "no credentials (emulator endpoint)")
    try:
        found, default_project = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError:
        raise ConfigError(
            "no Google Cloud credentials found",
            hint="set credentials_file or credentials_json (a service-account key), or "
            "GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`",
        ) from None
    return _Auth(found, project or default_project, "the application-default credentials")


def _load_key(raw: str | Mapping[str, Any], source: str, project: str | None) -> _Auth:
    """Credentials from a key's JSON; every problem is a ConfigError that quotes no content."""
    if isinstance(raw, str):
        try:
            info = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"the Google credentials from {source} are not valid JSON "
                f"(line {exc.lineno}, column {exc.colno})",
                hint="use the key file as downloaded (`gcloud iam service-accounts keys "
                "create`), unchanged",
            ) from None
    else:
        info = dict(raw)
    if not isinstance(info, dict):
        raise ConfigError(f"the Google credentials from {source} are not a JSON object")
    kind = info.get("type")
    if kind not in _CREDENTIAL_TYPES:
        raise ConfigError(
            f"the Google credentials from {source} have type {kind!r}, which is not a "
            "credential type this backend takes",
            hint='use a service-account key ("type": "service_account"), or the '
            "application-default credentials of `gcloud auth application-default login`",
        )
    if kind == "service_account":
        missing = [f for f in _SERVICE_ACCOUNT_FIELDS if not info.get(f)]
        if missing:
            raise ConfigError(
                f"the service-account key from {source} lacks {', '.join(missing)}",
                hint="download a fresh key; the file must be used unchanged",
            )
    load: Callable[..., Credentials] = (
        service_account.Credentials.from_service_account_info
        if kind == "service_account"
        else user_credentials.Credentials.from_authorized_user_info
    )
    try:
        credentials = load(info, scopes=SCOPES)
    except (google.auth.exceptions.GoogleAuthError, ValueError):
        raise ConfigError(
            f"the Google credentials from {source} cannot be used (a malformed private key?)",
            hint="download a fresh key; the file must be used unchanged",
        ) from None
    key_project = info.get("project_id") or info.get("quota_project_id")
    return _Auth(credentials, project or key_project or None, source)


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

    def __repr__(self) -> str:
        return f"GcsStorage({self._where!r})"

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._client.close()

    def _blob(self, name: str) -> gcs.Blob:
        return self._bucket.blob(self._prefix + check_name(name))

    def server_time(self) -> datetime | None:
        """The service's clock (storage.base.ServerClock): the ``Date`` header of a listing
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
        except Exception as exc:  # translated below; anything unknown stays a bug
            error = self._translate(exc, action, missing=missing)
            if error is None:
                raise
            raise error from exc

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
        except Exception as exc:
            error = self._translate(exc, "create the bucket", missing="")
            if isinstance(error, StoragePermissionDenied):
                raise StoragePermissionDenied(
                    f"{self._where}: the bucket {self._bucket_name!r} does not exist and the "
                    "credentials may not create it",
                    hint="create the bucket (`gcloud storage buckets create`) or give the "
                    f"account from {self._credential_source} the Storage Admin role",
                ) from exc
            if error is None:
                raise
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
        except Exception as exc:
            error = self._translate(exc, f"write {name!r}", missing="bucket")
            if error is None:
                raise
            raise error from exc

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
            raise self._translate_known(exc, f"read {name!r}", missing="object") from exc
        except Exception as exc:
            error = self._translate(exc, f"read {name!r}", missing="object")
            if error is None:
                raise
            raise error from exc
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
            except Exception as exc:
                error = self._translate(exc, f"list {prefix or '/'}", missing="")
                if error is None:
                    raise
                raise error from exc
            yield from found

    def delete(self, name: str) -> None:
        blob = self._blob(name)
        self._call(
            f"delete {name!r}",
            lambda: blob.delete(retry=None, timeout=self._timeout),
            missing="object",
        )

    # --- errors -----------------------------------------------------------------------------

    def _no_answer(self, exc: BaseException) -> str:
        """What went wrong when no HTTP answer came, naming the timeout that struck."""
        endpoint = self._endpoint
        connect, read = self._timeout
        if isinstance(exc, requests.ConnectTimeout):
            return f"{endpoint} did not accept a connection in time (connect_timeout={connect:g} s)"
        if isinstance(exc, requests.Timeout):
            return f"{endpoint} did not answer in time (read_timeout={read:g} s)"
        if isinstance(exc, requests.ConnectionError) and _refused(exc):
            return f"cannot connect to {endpoint}"
        return f"the connection to {endpoint} broke ({type(exc).__name__})"

    def _translate_known(self, exc: BaseException, action: str, *, missing: str) -> StorageError:
        error = self._translate(exc, action, missing=missing)
        return error or StorageError(f"{self._where}: could not {action} ({type(exc).__name__})")

    def _translate(self, exc: BaseException, action: str, *, missing: str) -> StorageError | None:
        """``exc`` as a safehold storage error, or None when it is not an SDK/transport error."""
        where = self._where
        if isinstance(exc, google.auth.exceptions.RefreshError):
            if getattr(exc, "retryable", False):
                return TransientStorageError(
                    f"{where}: could not {action}: the token service did not answer; "
                    "may be temporary"
                )
            return StoragePermissionDenied(
                f"{where}: authentication failed: could not {action} (the access token "
                "was refused)",
                hint=f"check the service-account key from {self._credential_source}: it may "
                "have been deleted or disabled",
            )
        if isinstance(
            exc, requests.RequestException | google.auth.exceptions.TransportError | OSError
        ):
            return TransientStorageError(
                f"{where}: could not {action}: {self._no_answer(exc)}; may be temporary"
            )
        if isinstance(exc, gcs_exceptions.DataCorruption):
            return TransientStorageError(
                f"{where}: could not {action}: the download failed its checksum; may be temporary"
            )
        status = _status(exc)
        if status is None:
            return None
        detail = f"HTTP {status}"
        if status == 404:
            if missing == "object":
                return ObjectNotFound(f"{where}: cannot {action}: no such object (or bucket)")
            return StorageError(
                f"{where}: could not {action}: the bucket {self._bucket_name!r} does not exist",
                hint="run `safehold init` to create it, or check the bucket name",
            )
        if status == 401:
            return StoragePermissionDenied(
                f"{where}: authentication failed: could not {action} ({detail})",
                hint=f"check the credentials from {self._credential_source}",
            )
        if status == 403:
            return StoragePermissionDenied(
                f"{where}: permission denied: could not {action} ({detail})",
                hint=f"give the account from {self._credential_source} a role that allows it "
                "(Storage Object Admin on the bucket)",
            )
        return status_error(where, action, status, detail)


def _refused(exc: BaseException) -> bool:
    """Whether a connection could not be opened at all (as opposed to one that broke)."""
    seen: BaseException | None = exc
    for _ in range(8):  # requests wraps urllib3, which wraps the socket error
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError) or type(seen).__name__ == "NewConnectionError":
            return True
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = nested or getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
    return False


def _status(exc: BaseException) -> int | None:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return int(exc.code) if exc.code is not None else None
    if isinstance(exc, gcs_exceptions.InvalidResponse):
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
        return int(code) if isinstance(code, int) else None
    return None


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> GcsStorage:
    """Open ``gs:rest``; with ``create`` (repository init) make the bucket if allowed."""
    bucket, prefix, settings = parse_settings(rest, options)
    endpoint = _endpoint(settings, os.environ)
    auth = _auth(settings, os.environ, endpoint)
    client = gcs.Client(
        project=auth.project,  # None (not omitted): never look a project up on the network
        credentials=auth.credentials,
        client_options={"api_endpoint": endpoint} if endpoint else None,
    )
    # The client fetches bucket metadata in background threads, for tracing attributes
    # only: extra requests with their own retries that outlive a failed call. Off.
    if getattr(client, "_bucket_metadata_cache", None) is not None:
        client._bucket_metadata_cache = None
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
