"""The sftp location string and the options of an sftp destination.

No paramiko here: parsing and validation happen before anything connects.
"""

from __future__ import annotations

import getpass
import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field

from safehold.errors import (
    ConfigError,
)

__all__ = ["DEFAULT_PORT", "ENV_PREFIX", "SftpOptions", "SftpTarget", "parse_location"]

DEFAULT_PORT = 22
ENV_PREFIX = "SAFEHOLD_SFTP_"


# --- the location ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SftpTarget:
    """Where an SFTP location points: user, host, port and the repository's path on the server."""

    user: str
    host: str
    port: int
    path: str  # absolute ("/srv/repo") or relative to the login folder ("backups/repo")

    def describe(self) -> str:
        """The location for messages: ``sftp:USER@HOST:PORT/PATH`` (``/~/`` for a path relative
        to the login folder)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.path.startswith("/") else f"/~/{self.path}"
        return f"sftp:{self.user}@{host}:{self.port}{path}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this server in known_hosts."""
        return self.host if self.port == DEFAULT_PORT else f"[{self.host}]:{self.port}"


# Both syntaxes (sftp URL and scp) and their errors in one place (ruff's branch cap waived).
def parse_location(rest: str) -> SftpTarget:  # noqa: PLR0912
    """``[//][USER@]HOST[:PORT]/PATH`` (``/~/PATH`` relative) or ``[USER@]HOST:PATH`` (scp)."""
    syntax = "write sftp:USER@HOST[:PORT]/absolute/path or sftp:USER@HOST[:PORT]/~/relative/path"
    text = rest[2:] if rest.startswith("//") else rest
    first = text.split("/", 1)[0]
    user = None
    if "@" in first:
        user, _, _ = first.rpartition("@")
        text = text[len(user) + 1 :]
        if ":" in user:
            # Never echo it: this is a password.
            raise ConfigError(
                "an sftp location must not contain a password",
                hint="remove it from the location; use the password option or "
                f"{ENV_PREFIX}PASSWORD (a key is better)",
            )
        if not user:
            raise ConfigError(f"the sftp location {rest!r} has an empty user name", hint=syntax)
    if text.startswith("["):
        host, bracket, text = text[1:].partition("]")
        if not bracket:
            raise ConfigError(f"the sftp location {rest!r} has an unclosed '['", hint=syntax)
    else:
        end = min((i for i in (text.find(":"), text.find("/")) if i >= 0), default=len(text))
        host, text = text[:end], text[end:]
    if not host:
        raise ConfigError(f"the sftp location {rest!r} names no host", hint=syntax)
    port = DEFAULT_PORT
    if text.startswith(":"):
        digits = text[1:].split("/", 1)[0]
        if digits.isdigit():
            port = int(digits)
            if not 0 < port < 65536:
                raise ConfigError(f"the sftp location {rest!r} has an invalid port", hint=syntax)
            path = text[1 + len(digits) :]
        else:
            path = text[1:]  # scp style: HOST:/abs, HOST:~/rel or HOST:rel
            path = path if path.startswith(("/", "~")) else f"~/{path}"
    else:
        path = text
    if path.startswith("/~"):
        path = path[1:]
    if path == "~" or path.startswith("~/"):
        path = path[2:] or "."  # relative: SFTP servers resolve it from the login folder
    elif path.startswith("~"):
        raise ConfigError(f"the sftp location {rest!r} names another user's folder", hint=syntax)
    path = posixpath.normpath(path) if path else ""
    if path.startswith("//"):  # normpath keeps a leading "//" (POSIX allows it a meaning)
        path = "/" + path.lstrip("/")
    if path in ("", ".", "/"):
        raise ConfigError(f"the sftp location {rest!r} names no folder", hint=syntax)
    return SftpTarget(user or getpass.getuser(), host, port, path)


# --- options ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SftpOptions:
    """The options of an sftp location; each also comes from ``SAFEHOLD_SFTP_<NAME>``."""

    key_file: str | None = None
    key: str | None = field(default=None, repr=False)
    key_passphrase: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    host_key: str | None = None
    known_hosts: str | None = None
    trust_on_first_use: bool = False
    connect_timeout: float = 15.0
    timeout: float = 60.0
    max_connections: int = 4
    #: Where each option that was set came from ("the key_file option", "SAFEHOLD_SFTP_KEY").
    sources: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, options: Mapping[str, object] | None, environ: Mapping[str, str]) -> SftpOptions:
        """Config-block keys win over the environment; unknown keys are an error."""
        given = dict(options or {})
        if "fingerprint" in given:  # service-backup's name for the same ssh-keyscan line
            if "host_key" in given:
                raise ConfigError("give host_key or fingerprint, not both")
            given["host_key"] = given.pop("fingerprint")
        names = [f for f in cls.__dataclass_fields__ if f != "sources"]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown option(s) for an sftp location: {', '.join(unknown)}",
                hint=f"sftp options are: {', '.join(names)}",
            )
        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        for name in names:
            env_name = ENV_PREFIX + name.upper()
            if given.get(name) is not None:
                raw, sources[name] = given[name], f"the {name} option"
            elif environ.get(env_name):
                raw, sources[name] = environ[env_name], env_name
            else:
                continue
            values[name] = _convert(name, raw, cls.__dataclass_fields__[name].type, sources[name])
        if values.get("key") and values.get("key_file"):
            raise ConfigError(
                f"both an inline key ({sources['key']}) and a key file ({sources['key_file']})"
                " are set",
                hint="keep one of them",
            )
        return cls(**values, sources=sources)  # type: ignore[arg-type]


def _convert(name: str, raw: object, kind: object, source: str) -> object:
    # `kind` is the annotation as a string (``from __future__ import annotations``).
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source} must be true or false")
    if kind in ("float", "int"):
        if not isinstance(raw, str | int | float) or isinstance(raw, bool):
            raise ConfigError(f"{source} must be a number")
        try:
            number = float(raw) if kind == "float" else int(raw)
        except ValueError:
            raise ConfigError(f"{source} must be a number, not {raw!r}") from None
        if number <= 0:
            raise ConfigError(f"{source} must be greater than 0")
        return number
    if not isinstance(raw, str):
        raise ConfigError(f"{source} must be a string")  # no value: it may be a secret
    if name in ("key_file", "known_hosts"):
        return os.path.expanduser(raw)
    return raw
