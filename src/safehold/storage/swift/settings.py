"""Options of the swift backend: validated from a config block, or read from the
environment variables the ``swift`` command line uses (docs/storage/swift.md).

No swiftclient here: parsing and validation happen before anything connects.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from safehold.errors import ConfigError
from safehold.storage.common import as_bool

__all__ = ["QUERY_KEYS", "SwiftOptions", "parse_options", "split_query"]

KiB, MiB, GiB = 1024, 1024**2, 1024**3
_MIN_SEGMENT = MiB  # Swift's SLO min_segment_size default

_CREDENTIAL_KEYS = {
    "auth_url", "auth_version", "user", "key", "username", "password", "project_name",
    "project_id", "user_domain_name", "project_domain_name", "region_name", "interface",
    "storage_url", "auth_token",
}  # fmt: skip
_OTHER_KEYS = {"create_container", "timeout", "connect_timeout", "segment_size"}
_SECRET_KEYS = {"key", "password", "auth_token"}
# A location ends up in shell history, process lists and logs: no secrets in its query.
QUERY_KEYS = (_CREDENTIAL_KEYS | _OTHER_KEYS) - _SECRET_KEYS


def split_query(rest: str) -> tuple[str, dict[str, object]]:
    """``CONTAINER/PREFIX?timeout=5&...`` -> (``CONTAINER/PREFIX``, non-secret options)."""
    path, _, query = rest.partition("?")
    found: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in _SECRET_KEYS:
            raise ConfigError(
                f"the swift option {key!r} is a secret and may not be part of the location",
                hint="give it in the destination's options or the environment (ST_KEY, "
                "OS_PASSWORD, OS_AUTH_TOKEN)",
            )
        if key not in QUERY_KEYS:
            raise ConfigError(
                f"unknown option in the swift location's query: {key!r}",
                hint=f"known options: {', '.join(sorted(QUERY_KEYS))}",
            )
        found[key] = value
    return path, found


@dataclass(frozen=True, kw_only=True)
class SwiftOptions:
    """Validated options; ``source`` says where the credentials came from (for hints)."""

    source: str
    auth_url: str | None = None
    auth_version: str = "1"
    user: str | None = None  # TempAuth
    key: str | None = None
    username: str | None = None  # Keystone v3
    password: str | None = None
    project_name: str | None = None
    project_id: str | None = None
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    region_name: str | None = None
    interface: str = "public"
    storage_url: str | None = None  # pre-authenticated
    auth_token: str | None = None
    create_container: bool = True
    timeout: float = 60.0
    connect_timeout: float = 10.0
    segment_size: int | None = None

    def __repr__(self) -> str:  # never show keys, passwords or tokens
        return f"SwiftOptions(source={self.source!r}, auth_url={self.auth_url!r})"


def _text(options: Mapping[str, object], name: str) -> str | None:
    value = options.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str | int):
        raise ConfigError(f"swift option {name!r} must be a string")
    return str(value)


def _seconds(options: Mapping[str, object], name: str, default: float) -> float:
    value = options.get(name, default)
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"swift option {name!r} must be a positive number of seconds")
    return seconds


def _size(value: object) -> int | None:
    if value is None or value in ("", 0):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        found = re.fullmatch(r"\s*(\d+)\s*(|B|KiB|MiB|GiB)\s*", str(value))
        if found is None:
            raise ConfigError(
                f"swift option 'segment_size' is not a size: {value!r}",
                hint="write bytes as a number, or with a unit: 512MiB, 1GiB",
            )
        unit = {"": 1, "B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}[found.group(2)]
        size = int(found.group(1)) * unit
    if size < _MIN_SEGMENT:
        raise ConfigError(
            "swift option 'segment_size' must be at least 1MiB (Swift's smallest SLO segment)"
        )
    return size


def _bool(options: Mapping[str, object], name: str, default: bool) -> bool:
    found = as_bool(options.get(name, default))
    if found is None:
        raise ConfigError(f"swift option {name!r} must be true or false")
    return found


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    """Credentials from the variables the ``swift`` command line reads."""

    def get(*names: str) -> str | None:
        return next((env[n] for n in names if env.get(n)), None)

    if get("OS_STORAGE_URL") and get("OS_AUTH_TOKEN"):
        return {
            "storage_url": get("OS_STORAGE_URL"),
            "auth_token": get("OS_AUTH_TOKEN"),
            "source": "OS_STORAGE_URL/OS_AUTH_TOKEN",
        }
    if get("ST_AUTH"):
        return {
            "auth_url": get("ST_AUTH"),
            "auth_version": get("ST_AUTH_VERSION") or "1",
            "user": get("ST_USER"),
            "key": get("ST_KEY"),
            "source": "ST_AUTH/ST_USER/ST_KEY",
        }
    if get("OS_AUTH_URL"):
        return {
            "auth_url": get("OS_AUTH_URL"),
            "auth_version": get("OS_AUTH_VERSION", "OS_IDENTITY_API_VERSION") or "3",
            "username": get("OS_USERNAME"),
            "password": get("OS_PASSWORD"),
            "project_name": get("OS_PROJECT_NAME", "OS_TENANT_NAME"),
            "project_id": get("OS_PROJECT_ID", "OS_TENANT_ID"),
            "user_domain_name": get("OS_USER_DOMAIN_NAME"),
            "project_domain_name": get("OS_PROJECT_DOMAIN_NAME"),
            "region_name": get("OS_REGION_NAME"),
            "interface": get("OS_INTERFACE", "OS_ENDPOINT_TYPE"),
            "source": "OS_* environment variables",
        }
    raise ConfigError(
        "no Swift credentials: give auth_url (and user/key or username/password) in the "
        "destination's options, or set ST_AUTH/ST_USER/ST_KEY or OS_AUTH_URL/OS_USERNAME/"
        "OS_PASSWORD/OS_PROJECT_NAME",
        hint="see docs/storage/swift.md",
    )


def parse_options(
    options: Mapping[str, object] | None, env: Mapping[str, str] | None = None
) -> SwiftOptions:
    """Validate ``options``; credentials come from ``env`` when none are in ``options``."""
    options = dict(options or {})
    unknown = set(options) - _CREDENTIAL_KEYS - _OTHER_KEYS
    if unknown:
        raise ConfigError(
            f"unknown option(s) for a swift location: {', '.join(sorted(unknown))}",
            hint=f"known options: {', '.join(sorted(_CREDENTIAL_KEYS | _OTHER_KEYS))}",
        )
    given = {k: v for k, v in options.items() if k in _CREDENTIAL_KEYS and v not in (None, "")}
    if "auth_url" in given or "storage_url" in given:
        creds: dict[str, object] = {**given, "source": "the destination's options"}
    else:
        # Credentials from the environment; options such as region_name refine them.
        creds = {**_from_env(os.environ if env is None else env), **given}
    source = str(creds["source"])
    storage_url, auth_token = _text(creds, "storage_url"), _text(creds, "auth_token")
    auth_url = _text(creds, "auth_url")
    version = (_text(creds, "auth_version") or "1").lower().removeprefix("v")
    version = {"1.0": "1", "3.0": "3"}.get(version, version)
    if storage_url or auth_token:
        if not (storage_url and auth_token):
            raise ConfigError(f"swift: storage_url and auth_token go together ({source})")
    elif not auth_url:
        raise ConfigError(f"swift: auth_url is missing ({source})")
    elif version == "1":
        if not (_text(creds, "user") and _text(creds, "key")):
            raise ConfigError(f"swift: TempAuth (auth_version 1) needs user and key ({source})")
    elif version == "3":
        if not (_text(creds, "username") and _text(creds, "password")):
            raise ConfigError(f"swift: Keystone v3 needs username and password ({source})")
        if not (_text(creds, "project_name") or _text(creds, "project_id")):
            raise ConfigError(f"swift: Keystone v3 needs project_name or project_id ({source})")
    else:
        raise ConfigError(
            f"swift: unsupported auth_version {version!r} ({source})",
            hint="use 1 (TempAuth and compatible) or 3 (Keystone v3)",
        )
    return SwiftOptions(
        source=source,
        auth_url=auth_url,
        auth_version=version,
        user=_text(creds, "user"),
        key=_text(creds, "key"),
        username=_text(creds, "username"),
        password=_text(creds, "password"),
        project_name=_text(creds, "project_name"),
        project_id=_text(creds, "project_id"),
        user_domain_name=_text(creds, "user_domain_name") or "Default",
        project_domain_name=_text(creds, "project_domain_name") or "Default",
        region_name=_text(creds, "region_name"),
        interface=_text(creds, "interface") or "public",
        storage_url=storage_url,
        auth_token=auth_token,
        create_container=_bool(options, "create_container", True),
        timeout=_seconds(options, "timeout", 60.0),
        connect_timeout=_seconds(options, "connect_timeout", 10.0),
        segment_size=_size(options.get("segment_size")),
    )
