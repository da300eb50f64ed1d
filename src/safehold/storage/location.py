"""From a location string to a storage backend.

A location is a plain path (``/srv/backup``, ``./repo``, ``C:\\backup``) or ``SCHEME:REST``:

* ``local:PATH`` — a folder (:class:`~safehold.storage.local.LocalStorage`)
* ``memory:NAME`` — a process-wide in-memory store (:class:`~safehold.storage.memory.MemoryStorage`)
* ``s3:https://HOST/BUCKET/PREFIX`` or ``s3:BUCKET/PREFIX`` — S3 and compatibles
* ``azure:CONTAINER/PREFIX`` — Azure Blob storage
* ``gs:BUCKET/PREFIX`` — Google Cloud Storage
* ``sftp:USER@HOST:PORT/PATH`` — a folder over SFTP (OpenSSH)
* ``swift:CONTAINER/PREFIX`` — OpenStack Swift

Each backend's page in docs/storage/ lists its options and environment variables.

Each scheme maps to a factory in :data:`BACKENDS`; a new backend adds one entry there. The
factory imports the backend's package (``safehold.storage.<name>``) when its scheme is
first used, so an SDK is loaded only then.

Locations may carry credentials (``s3://KEY:SECRET@host/bucket``, ``?sig=...``); use
:func:`redact` before putting one in a message or a log.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from typing import Protocol

from safehold.errors import ConfigError
from safehold.storage.base import Storage

__all__ = ["BACKENDS", "BackendFactory", "local_folder", "open_location", "redact"]


Options = Mapping[str, object]


class BackendFactory(Protocol):
    """How a backend module opens a location: ``BACKENDS`` maps each scheme to one."""

    def __call__(self, rest: str, *, create: bool, options: Options | None = None) -> Storage:
        """Open the backend for the location ``SCHEME:rest``.

        ``options`` are the keys of the destination's config block (credentials, endpoint,
        timeouts...); a backend rejects keys it does not know with a ConfigError naming them.
        """
        ...


def _lazy(module: str) -> BackendFactory:
    """A factory that imports ``safehold.storage.<module>`` (and so its SDK) only when used.

    Each backend defines ``from_location(rest, *, create, options=None) -> Storage``.
    """

    def factory(rest: str, *, create: bool, options: Options | None = None) -> Storage:
        mod = importlib.import_module(f"safehold.storage.{module}")
        opened: Storage = mod.from_location(rest, create=create, options=options)
        return opened

    return factory


BACKENDS: dict[str, BackendFactory] = {
    "local": _lazy("local"),
    "memory": _lazy("memory"),
    "s3": _lazy("s3"),
    "azure": _lazy("azure"),
    "gs": _lazy("gcs"),
    "sftp": _lazy("sftp"),
    "swift": _lazy("swift"),
}

# RFC 3986 scheme syntax. A one-letter scheme is a Windows drive (C:\x, c:/x, C:x).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(.*)$", re.DOTALL)


def local_folder(location: str) -> str | None:
    """The folder a location names if it is a local one (a plain path or ``local:PATH``),
    else None; says nothing about whether it exists."""
    found = _SCHEME.match(location)
    if found is None:
        return location or None
    if found.group(1).lower() == "local":
        return found.group(2) or None
    return None


def open_location(
    location: str, *, create: bool = False, options: Options | None = None
) -> Storage:
    """Open the storage ``location`` names; ``create`` lets a local root folder be made."""
    if not location:
        raise ConfigError("the storage location is empty", hint="give a folder path")
    found = _SCHEME.match(location)
    if found is None:
        return BACKENDS["local"](location, create=create, options=options)
    scheme, rest = found.group(1).lower(), found.group(2)
    factory = BACKENDS.get(scheme)
    if factory is None:
        supported = ", ".join(f"{name}:" for name in sorted(BACKENDS))
        hint = (
            None
            if rest.startswith("//")
            else f"for a folder whose name contains ':', write local:{location}"
        )
        raise ConfigError(
            f"unsupported storage location {redact(location)!r}: "
            f"unknown scheme {scheme!r} (supported: {supported} or a plain path)",
            hint=hint,
        )
    return factory(rest, create=create, options=options)


# scheme://userinfo@ — userinfo cannot contain '/', '?' or '#'.
# An optional backend scheme before the URL's own (``s3:https://KEY:SECRET@host/...``).
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?[A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")
_SECRET_KEY = re.compile(
    r"pass|pwd|secret|token|key|sig|credential|auth|session|sas", re.IGNORECASE
)


def redact(location: str) -> str:
    """``location`` without credentials: userinfo is removed, secret query values masked.

    ``s3://AKIA:secret@host/bucket?region=eu&secret_key=x`` becomes
    ``s3://host/bucket?region=eu&secret_key=***``. Plain paths are returned unchanged.
    """
    if "://" not in location:
        return location
    redacted = _USERINFO.sub(r"\1", location)
    base, sep, query = redacted.partition("?")
    if not sep:
        return redacted
    query, hash_sep, fragment = query.partition("#")
    params = []
    for param in query.split("&"):
        key, eq, _value = param.partition("=")
        params.append(f"{key}=***" if eq and _SECRET_KEY.search(key) else param)
    return f"{base}?{'&'.join(params)}{hash_sep}{fragment}"
