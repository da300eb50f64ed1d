"""The settings of an S3 location: parsed from the location string and a config block.

Location forms (the part after ``s3:``)::

    https://host:port/bucket/prefix     an S3-compatible endpoint (MinIO, Ceph, SeaweedFS...)
    bucket/prefix                       AWS S3; the region comes from the options or AWS_*
    //bucket/prefix                     the same (``s3://bucket/prefix``)

Non-secret options may also ride in a query string (``...?region=eu-west-1&read_timeout=5``)
so that a bare location on the command line can carry them; credentials may not, because a
location string ends up in shell history, process lists and logs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import urlsplit

from safehold.errors import ConfigError
from safehold.storage.common import as_bool, check_prefix, merge_query

__all__ = ["DEFAULT_PART_SIZE", "MIN_PART_SIZE", "S3Settings", "parse_settings"]

MiB = 1 << 20
#: S3 accepts parts of 5 MiB to 5 GiB (the last part may be smaller).
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
#: Above safehold's 16 MiB packs, so a default pack is one PUT (one round trip, no
#: multipart bookkeeping); larger objects go up in parts of this size.
DEFAULT_PART_SIZE = 32 * MiB

AddressingStyle = Literal["path", "virtual", "auto"]
#: S3 Object Lock retention modes: GOVERNANCE may be shortened or lifted by an identity
#: with s3:BypassGovernanceRetention (and the account root); COMPLIANCE by nobody.
ObjectLockMode = Literal["GOVERNANCE", "COMPLIANCE"]
_SECRETS = frozenset({"access_key_id", "secret_access_key", "session_token"})
_KNOWN = frozenset(
    {
        "endpoint_url", "region", "access_key_id", "secret_access_key", "session_token",
        "profile", "addressing_style", "storage_class", "sse", "sse_kms_key_id", "part_size",
        "connect_timeout", "read_timeout", "create_bucket", "object_lock_days",
        "object_lock_mode",
    }
)  # fmt: skip
# Classes whose objects cannot be read without a restore request first: a repository must
# read its index and packs directly, so these would break check, restore and prune.
_ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
_STORAGE_CLASSES = frozenset(
    {
        "STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "REDUCED_REDUNDANCY",
        "GLACIER_IR", "EXPRESS_ONEZONE",
    }
)  # fmt: skip
_SSE = frozenset({"AES256", "aws:kms"})
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """Everything needed to reach one bucket and prefix; secrets stay out of ``repr``."""

    bucket: str
    prefix: str = ""  # without leading or trailing '/'
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    profile: str | None = None
    addressing_style: AddressingStyle = "auto"
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    create_bucket: bool = True
    object_lock_days: int | None = None
    object_lock_mode: ObjectLockMode = "GOVERNANCE"

    def describe(self) -> str:
        """The location for messages: ``s3:[ENDPOINT/]BUCKET/PREFIX``."""
        where = f"{self.endpoint_url}/{self.bucket}" if self.endpoint_url else self.bucket
        return f"s3:{where}/{self.prefix}" if self.prefix else f"s3:{where}"

    def credential_source(self) -> str:
        """Where the credentials come from, for hints (names only, never values)."""
        if self.access_key_id or self.secret_access_key:
            return "the access_key_id/secret_access_key options"
        if self.profile:
            return f"the AWS profile {self.profile!r}"
        return (
            "the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables "
            "(or AWS_PROFILE and ~/.aws/credentials)"
        )


def parse_settings(rest: str, options: Mapping[str, object] | None) -> S3Settings:
    """Validate the location ``s3:rest`` and its options into :class:`S3Settings`."""
    base, merged = merge_query(
        rest,
        options,
        secrets=_SECRETS,
        known=_KNOWN,
        secret_message="the S3 location carries the secret option {key} in its query string",
        secret_hint="put credentials in the destination's config block or in AWS_* "
        "environment variables, never in the location",
        unknown_message="unknown option(s) for an s3 location: {keys}",
    )
    endpoint, bucket, prefix = _parse_location(base)
    option_endpoint = _opt_str(merged, "endpoint_url")
    if endpoint and option_endpoint and option_endpoint.rstrip("/") != endpoint:
        raise ConfigError(
            "the S3 location names an endpoint and the endpoint_url option names another",
            hint="give the endpoint once: either in the location or as endpoint_url",
        )
    endpoint = endpoint or (option_endpoint.rstrip("/") if option_endpoint else None)
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            f"endpoint_url {endpoint!r} must start with http:// or https://",
            hint="for example endpoint_url: https://minio.example.com:9000",
        )
    style = _opt_str(merged, "addressing_style")
    if style is None:
        # Compatible servers are usually reached by IP or a name without wildcard DNS.
        style = "path" if endpoint else "auto"
    if style not in ("path", "virtual", "auto"):
        raise ConfigError(
            f"addressing_style must be path, virtual or auto, not {style!r}",
            hint="path puts the bucket in the URL path (most compatible servers)",
        )
    storage_class = _opt_str(merged, "storage_class")
    if storage_class is not None:
        storage_class = storage_class.upper()
        if storage_class in _ARCHIVE_CLASSES:
            raise ConfigError(
                f"storage_class {storage_class} cannot hold a repository: its objects must "
                "be restored before they can be read",
                hint="use STANDARD_IA, GLACIER_IR or INTELLIGENT_TIERING for cheap storage "
                "that stays readable",
            )
        if storage_class not in _STORAGE_CLASSES:
            raise ConfigError(
                f"unknown storage_class {storage_class!r}",
                hint=f"one of {', '.join(sorted(_STORAGE_CLASSES))}",
            )
    sse = _opt_str(merged, "sse")
    if sse is not None and sse not in _SSE:
        raise ConfigError(f"sse must be AES256 or aws:kms, not {sse!r}")
    kms_key = _opt_str(merged, "sse_kms_key_id")
    if kms_key and sse != "aws:kms":
        raise ConfigError("sse_kms_key_id needs sse: aws:kms")
    part_size = _opt_size(merged, "part_size", DEFAULT_PART_SIZE)
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ConfigError(
            f"part_size {part_size} is outside what S3 accepts",
            hint="give between 5 MiB and 5 GiB, e.g. part_size: 64MiB",
        )
    key_id, secret = _opt_str(merged, "access_key_id"), _opt_str(merged, "secret_access_key")
    if bool(key_id) != bool(secret):
        raise ConfigError(
            "access_key_id and secret_access_key go together: only one is given",
            hint="give both, or neither to use the AWS_* variables or a profile",
        )
    lock_days = _opt_int(merged, "object_lock_days")
    if lock_days is not None and lock_days < 1:
        raise ConfigError("object_lock_days must be a positive number of days")
    raw_mode = _opt_str(merged, "object_lock_mode")
    lock_mode = (raw_mode or "governance").upper()
    if lock_mode not in ("GOVERNANCE", "COMPLIANCE"):
        raise ConfigError(
            f"object_lock_mode must be governance or compliance, not {raw_mode!r}",
            hint="governance (the default) can be lifted by an identity allowed to bypass "
            "it; compliance by nobody, not even the account root, until it ends",
        )
    if raw_mode and lock_days is None:
        raise ConfigError(
            "object_lock_mode needs object_lock_days",
            hint="give the retention period too, e.g. object_lock_days: 30",
        )
    return S3Settings(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=_opt_str(merged, "region"),
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=_opt_str(merged, "session_token"),
        profile=_opt_str(merged, "profile"),
        addressing_style=cast(AddressingStyle, style),
        storage_class=storage_class,
        sse=sse,
        sse_kms_key_id=kms_key,
        part_size=part_size,
        connect_timeout=_opt_seconds(merged, "connect_timeout", 10.0),
        read_timeout=_opt_seconds(merged, "read_timeout", 60.0),
        create_bucket=_opt_bool(merged, "create_bucket", True),
        object_lock_days=lock_days,
        object_lock_mode=cast(ObjectLockMode, lock_mode),
    )


def _parse_location(base: str) -> tuple[str | None, str, str]:
    endpoint: str | None = None
    path = base
    if base.startswith(("http://", "https://")):
        url = urlsplit(base)
        if "@" in url.netloc:
            raise ConfigError(
                "the S3 location contains credentials (user:secret@host)",
                hint="remove them; use the access_key_id/secret_access_key options or the "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables",
            )
        if not url.netloc:
            raise ConfigError(f"the S3 location {base!r} has no host")
        endpoint = f"{url.scheme}://{url.netloc}"
        path = url.path
    path = path.strip("/")
    bucket, _, prefix = path.partition("/")
    if not bucket:
        raise ConfigError(
            "the S3 location names no bucket",
            hint="write s3:https://host:port/BUCKET/prefix or s3:BUCKET/prefix",
        )
    prefix = prefix.strip("/")
    check_prefix("S3", prefix)
    return endpoint, bucket, prefix


def _opt_str(options: Mapping[str, object], key: str) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"option {key} must be a string")
    return value


def _opt_bool(options: Mapping[str, object], key: str, default: bool) -> bool:
    value = options.get(key, default)
    found = as_bool(value)
    if found is None:
        raise ConfigError(f"option {key} must be true or false, not {value!r}")
    return found


def _opt_int(options: Mapping[str, object], key: str) -> int | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(f"option {key} must be a whole number, not {value!r}")


def _opt_seconds(options: Mapping[str, object], key: str, default: float) -> float:
    value = options.get(key, default)
    try:
        seconds = float(value) if isinstance(value, int | float | str) else -1.0
    except ValueError:
        seconds = -1.0
    if isinstance(value, bool) or not seconds > 0:
        raise ConfigError(f"option {key} must be a positive number of seconds, not {value!r}")
    return seconds


def _opt_size(options: Mapping[str, object], key: str, default: int) -> int:
    value = options.get(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    found = _SIZE.match(value) if isinstance(value, str) else None
    if found is None:
        raise ConfigError(f"option {key} must be a size like 64MiB, not {value!r}")
    unit = (found.group(2) or "").upper()[:1]
    return int(found.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]
