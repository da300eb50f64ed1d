"""Logic the storage backends share: ranged-read checks and location-option parsing.

No SDK imports here (pydantic only, which the settings models use anyway): every
backend's ``settings`` module uses it, and validates without touching its SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from safehold.errors import ConfigError, IntegrityError

if TYPE_CHECKING:  # pydantic itself is imported by the settings models that raise these
    from pydantic import ValidationError

__all__ = [
    "as_bool",
    "check_aliases",
    "check_length",
    "check_prefix",
    "check_range",
    "empty_read",
    "merge_query",
    "past_end",
    "settings_error",
    "short_read",
    "split_path",
]

# --- ranged reads ----------------------------------------------------------------------------


def check_range(offset: int, length: int | None) -> None:
    """Refuse a negative offset or length (a caller's bug, hence ``ValueError``)."""
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range offset={offset} length={length}")


def short_read(where: str, name: str, size: int, offset: int, length: int | None) -> IntegrityError:
    """The error for a range that reaches past the end of an object of ``size`` bytes."""
    wanted = "to the end" if length is None else f"{length} bytes"
    return IntegrityError(
        f"{where}: object {name!r} is {size} bytes, too short to read {wanted} at offset {offset}",
        hint="the object is truncated or damaged; run `safehold check`",
    )


def empty_read(size: Callable[[], int], where: str, name: str, offset: int) -> bytes:
    """A read of length 0: HTTP has no empty range, so the size alone decides.

    ``size`` stats the object, so a missing object is still :class:`ObjectNotFound`.
    """
    found = size()
    if offset > found:
        raise short_read(where, name, found, offset, 0)
    return b""


def past_end(
    size: Callable[[], int], where: str, name: str, offset: int, length: int | None
) -> bytes:
    """A range the server refused as starting at or past the end (HTTP 416).

    Only reading "to the end" from exactly the end is fine (it is empty); anything else
    reaches past a shorter object.
    """
    found = size()
    if length is None and offset == found:
        return b""
    # Called while handling the server's refusal: that error says nothing more.
    raise short_read(where, name, found, offset, length) from None


def check_length(where: str, name: str, data: bytes, offset: int, length: int | None) -> None:
    """A read of ``length`` bytes that brought fewer means the object is shorter."""
    if length is not None and len(data) != length:
        raise short_read(where, name, offset + len(data), offset, length)


# --- location options ------------------------------------------------------------------------


def merge_query(
    rest: str,
    options: Mapping[str, object] | None,
    *,
    secrets: Set[str],
    known: Set[str],
    secret_message: str,
    secret_hint: str,
    unknown_message: str,
) -> tuple[str, dict[str, object]]:
    """Split ``PATH?KEY=VALUE&...`` and merge its query under ``options`` (which win).

    A location ends up in shell history, process lists and logs, so a secret key in its
    query is refused; so is any key not in ``known``, named in the message.
    ``secret_message`` is formatted with ``key`` (the key's repr); ``unknown_message`` with
    ``keys`` (the unknown keys, comma-separated).
    """
    base, _, query = rest.partition("?")
    merged: dict[str, object] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in secrets:
            raise ConfigError(secret_message.format(key=repr(key)), hint=secret_hint)
        merged[key] = value
    merged.update(options or {})
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ConfigError(
            unknown_message.format(keys=", ".join(unknown)),
            hint=f"known options: {', '.join(sorted(known))}",
        )
    return base, merged


def check_aliases(aliases: Mapping[str, str], merged: Mapping[str, object]) -> None:
    """Refuse an option given under both its name and an alias of it."""
    for alias, name in aliases.items():
        if alias in merged and name in merged:
            raise ConfigError(f"options {alias} and {name} are the same; give only one")


def as_bool(value: object) -> bool | None:
    """``value`` as a boolean (a bool, or true/yes/1/false/no/0 in any case); None if neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    return None


def settings_error(exc: ValidationError, kind: str) -> ConfigError:
    """A pydantic error as a :class:`ConfigError` naming ``kind``'s failing options."""
    # Only the key and pydantic's description: the input may be a secret.
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return ConfigError(f"invalid {kind} option(s): {problems}")


def split_path(base: str) -> tuple[str, str]:
    """``[//]NAME[/PREFIX]`` (the part after ``scheme:``) -> ``(NAME, PREFIX)``, without '/'
    around either."""
    path = base[2:] if base.startswith("//") else base
    name, _, prefix = path.strip("/").partition("/")
    return name, prefix.strip("/")


def check_prefix(kind: str, prefix: str) -> None:
    """Refuse a prefix (already stripped of '/') with an empty, '.' or '..' part."""
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"the {kind} prefix {prefix!r} has an empty, '.' or '..' part")
