"""The SDK client of a ``gs:`` location: credentials and the storage client.

Credentials, first match wins (see the package docstring). A key is checked when the
location is opened, so a malformed or wrong-type key is a :class:`ConfigError` before any
request; its content never reaches a message or a ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth
import google.auth.exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage as gcs  # type: ignore[import-untyped]  # no type information
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account
from pydantic import SecretStr

from safehold.errors import ConfigError
from safehold.storage.gcs.settings import GcsSettings

__all__ = ["SCOPES", "Auth", "auth", "endpoint", "open_client"]

SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
# Key types this backend loads, each with its own loader (google-auth warns against its
# generic loader for configurations from outside: it would accept any type).
_CREDENTIAL_TYPES = ("service_account", "authorized_user")
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")


@dataclass(frozen=True)
class Auth:
    """Credentials to use, the project, and where they came from (for hints, never their
    content)."""

    credentials: Credentials
    project: str | None
    source: str  # where the credentials came from, for hints (never their content)


def endpoint(settings: GcsSettings, env: Mapping[str, str]) -> str | None:
    """The endpoint URL of an emulator (the ``endpoint`` option or ``STORAGE_EMULATOR_HOST``), or
    None for Google itself."""
    endpoint = (settings.endpoint or env.get("STORAGE_EMULATOR_HOST") or "").strip().rstrip("/")
    if not endpoint:
        return None
    if not endpoint.startswith(("http://", "https://")):
        # STORAGE_EMULATOR_HOST is often written as host:port.
        endpoint = f"http://{endpoint}"
    return endpoint


def auth(settings: GcsSettings, env: Mapping[str, str], endpoint: str | None) -> Auth:
    """The credentials: inline JSON, a key file, none for an emulator, else Google's
    application defaults; raises :class:`ConfigError` when none can be found or read."""
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
        return Auth(anonymous, project, "no credentials (emulator endpoint)")
    try:
        found, default_project = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError:
        raise ConfigError(
            "no Google Cloud credentials found",
            hint="set credentials_file or credentials_json (a service-account key), or "
            "GOOGLE_APPLICATION_CREDENTIALS, or run `gcloud auth application-default login`",
        ) from None
    return Auth(found, project or default_project, "the application-default credentials")


def _load_key(raw: str | Mapping[str, Any], source: str, project: str | None) -> Auth:
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
    return Auth(credentials, project or key_project or None, source)


def open_client(auth: Auth, endpoint: str | None) -> gcs.Client:
    """A storage client with ``auth``'s credentials, for Google or the emulator at
    ``endpoint``."""
    client = gcs.Client(
        project=auth.project,  # None (not omitted): never look a project up on the network
        credentials=auth.credentials,
        client_options={"api_endpoint": endpoint} if endpoint else None,
    )
    # The client fetches bucket metadata in background threads, for tracing attributes
    # only: extra requests with their own retries that outlive a failed call. Off.
    if getattr(client, "_bucket_metadata_cache", None) is not None:
        client._bucket_metadata_cache = None
    return client
