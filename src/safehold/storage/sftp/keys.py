"""Who we are and who the server is: private keys, host-key pins, known_hosts, and
trust on first use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import paramiko
from paramiko.message import Message

from safehold.errors import (
    ConfigError,
    StorageError,
)
from safehold.storage.sftp.settings import ENV_PREFIX, SftpOptions, SftpTarget

__all__ = ["HostKeyTrust", "default_keys", "fingerprint", "load_private_key"]

log = logging.getLogger(__name__)


# --- keys --------------------------------------------------------------------------------------


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def _show(key_type: str, blob_or_fp: bytes | str) -> str:
    fp = blob_or_fp if isinstance(blob_or_fp, str) else fingerprint(blob_or_fp)
    short = key_type.removeprefix("ssh-").split("-")[0].upper() if key_type else "key"
    return f"{short} {fp}"


def load_private_key(opts: SftpOptions) -> paramiko.PKey | None:
    """The key from ``key``/``key_file``, or None (then ssh-agent and ~/.ssh are tried)."""
    source = opts.sources.get("key") or opts.sources.get("key_file", "")
    hint = f"check the key given by {source}"
    try:
        if opts.key_file:
            return _key_from_file(opts.key_file, opts.key_passphrase)
        if opts.key:
            text = opts.key.strip() + "\n"
            for cls in paramiko.key_classes:
                try:
                    return cls.from_private_key(io.StringIO(text), opts.key_passphrase)
                except paramiko.PasswordRequiredException:
                    raise
                except (paramiko.SSHException, ValueError):
                    continue
            raise ConfigError(f"{source} is not a private key safehold can read", hint=hint)
    except (paramiko.PasswordRequiredException, _NeedsPassphrase):
        raise ConfigError(
            f"the private key from {source} is encrypted",
            hint=f"give its passphrase with key_passphrase or {ENV_PREFIX}KEY_PASSPHRASE",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the key file from {source}: {exc.strerror}") from None
    except (paramiko.SSHException, ValueError, TypeError):
        raise ConfigError(
            f"the key from {source} cannot be read (not a private key, or a wrong passphrase)",
            hint=hint,
        ) from None
    return None


class _NeedsPassphrase(Exception):
    pass


def _key_from_file(path: str | Path, passphrase: str | None) -> paramiko.PKey:
    # PKey.from_path wants the passphrase as bytes, and says "none given" with a TypeError.
    secret = cast(str | None, passphrase.encode() if passphrase is not None else None)
    try:
        return paramiko.PKey.from_path(path, secret)
    except TypeError as exc:
        if passphrase is None and "password" in str(exc):
            raise _NeedsPassphrase from None
        raise


def default_keys(passphrase: str | None) -> list[paramiko.PKey]:
    """What ``ssh`` would offer: the agent's keys, then ~/.ssh/id_{ed25519,ecdsa,rsa}."""
    keys: list[paramiko.PKey] = []
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            keys.extend(paramiko.Agent().get_keys())
        except paramiko.SSHException as exc:
            log.debug("ssh-agent not usable: %s", exc)
    for name in ("id_ed25519", "id_ecdsa", "id_rsa"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            try:
                keys.append(_key_from_file(path, passphrase))
            except (paramiko.SSHException, OSError, ValueError, TypeError, _NeedsPassphrase) as exc:
                log.debug("skipping %s: %s", path, exc.__class__.__name__)
    return keys


# --- host keys ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pin:
    key_type: str  # "" for a bare fingerprint
    blob: bytes | None
    fp: str

    def matches(self, blob: bytes) -> bool:
        return blob == self.blob if self.blob is not None else fingerprint(blob) == self.fp


def _parse_pins(text: str, source: str) -> list[_Pin]:
    """``ssh-keyscan`` lines (``[HOST] TYPE BASE64 [COMMENT]``) or ``SHA256:`` fingerprints."""
    pins = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0].startswith("SHA256:"):
            pins.append(_Pin("", None, words[0].rstrip("=")))
            continue
        if len(words) >= 3 and not _is_key_type(words[0]):
            words = words[1:]  # the host field: the pin is tied to this location anyway
        try:
            key_type, blob = words[0], base64.b64decode(words[1], validate=True)
            inner = Message(blob).get_text()
        except (IndexError, binascii.Error, UnicodeDecodeError, paramiko.SSHException):
            inner = key_type = ""
            blob = b""
        if not blob or inner != key_type:
            raise ConfigError(
                f"{source} is not a host key",
                hint="give a line of `ssh-keyscan -p PORT HOST` output or a SHA256: fingerprint",
            )
        pins.append(_Pin(key_type, blob, fingerprint(blob)))
    if not pins:
        raise ConfigError(f"{source} is empty")
    return pins


def _is_key_type(word: str) -> bool:
    return word.startswith(("ssh-", "ecdsa-", "sk-", "rsa-"))


def _preferred_types(key_types: set[str]) -> list[str]:
    # An "ssh-rsa" key is negotiated under its SHA-2 signature names too.
    out = []
    for key_type in sorted(key_types):
        out += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if key_type == "ssh-rsa" else [key_type]
    return out


class HostKeyTrust:
    """Decides whether a server key is the right one; records it for trust-on-first-use."""

    def __init__(self, target: SftpTarget, opts: SftpOptions, where: str) -> None:
        self._target = target
        self._where = where
        self._tofu = opts.trust_on_first_use
        self._pin_source = opts.sources.get("host_key", "")
        self._pins = _parse_pins(opts.host_key, self._pin_source) if opts.host_key else []
        self._known_hosts = Path(opts.known_hosts or Path.home() / ".ssh" / "known_hosts")
        self._lock = threading.Lock()
        self._accepted: bytes | None = None  # trusted on first use in this process

    def prefer_known_types(self, transport: paramiko.Transport) -> None:
        """Ask for a key type we hold a pin for, or the server may show another one."""
        known = {p.key_type for p in self._pins if p.key_type} or set(self._known_keys())
        if known:
            options = transport.get_security_options()
            first = [t for t in _preferred_types(known) if t in options.key_types]
            options.key_types = first + [t for t in options.key_types if t not in first]

    def _known_keys(self) -> dict[str, bytes]:
        if self._pins or not self._known_hosts.is_file():
            return {}
        try:
            host_keys = paramiko.HostKeys(str(self._known_hosts))
        except (OSError, paramiko.SSHException, ValueError, binascii.Error) as exc:
            raise StorageError(
                f"cannot read the known_hosts file {self._known_hosts} ({exc})",
                hint="fix or remove the damaged line",
            ) from exc
        found = host_keys.lookup(self._target.known_hosts_name)
        return {key_type: key.asbytes() for key_type, key in (found or {}).items()}

    def verify(self, key: paramiko.PKey) -> None:
        """Accept the server's host key if a pin or the known_hosts file names it, or on first use
        when allowed (then it is recorded); else raise :class:`StorageError` saying how to fix it.
        """
        blob, key_type = key.asbytes(), key.get_name()
        received = _show(key_type, blob)
        server = self._target.known_hosts_name
        with self._lock:
            if self._pins:
                if any(pin.matches(blob) for pin in self._pins):
                    return
                expected = ", ".join(_show(p.key_type, p.fp) for p in self._pins)
                raise self._changed(
                    received, expected, self._pin_source, f"update {self._pin_source}"
                )
            known = self._known_keys()
            if known:
                if blob in known.values():
                    return
                expected = ", ".join(_show(t, b) for t, b in known.items())
                source = f"the known_hosts file {self._known_hosts}"
                fix = f"run `ssh-keygen -R '{server}' -f {self._known_hosts}` and pin it again"
                raise self._changed(received, expected, source, fix)
            if self._accepted == blob:
                return
            if not self._tofu:
                port = self._target.port
                raise StorageError(
                    f"{self._where}: the host key of {server} is not known, so safehold will "
                    f"not connect (the server offered {received})",
                    hint=f"run `ssh-keyscan -p {port} {self._target.host}` from a trusted "
                    "network, compare its fingerprint with the one the server's administrator "
                    "gives you, and put the line in the host_key option (or "
                    f"{ENV_PREFIX}HOST_KEY) or in {self._known_hosts}; or set "
                    "trust_on_first_use to accept and record the key on first connection",
                )
            self._accepted = blob
            self._record(f"{server} {key_type} {key.get_base64()}\n")
            log.warning(
                "%s: trusting the host key of %s on first use: %s", self._where, server, received
            )

    def _changed(self, received: str, expected: str, source: str, fix: str) -> StorageError:
        server = self._target.known_hosts_name
        return StorageError(
            f"{self._where}: THE HOST KEY OF {server} HAS CHANGED, or someone is intercepting "
            f"the connection: the server offered {received}, but {source} expects {expected}. "
            "safehold refused to connect",
            hint="if the server's key was changed on purpose, confirm the new fingerprint with "
            "its administrator (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the "
            f"server), then {fix}",
        )

    def _record(self, line: str) -> None:
        path = self._known_hosts
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(path, "a+b") as f:
                f.seek(0, os.SEEK_END)
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
                f.write(line.encode())
        except OSError as exc:
            # Trusted for this process anyway; the next run will ask again.
            log.warning("%s: could not record the host key in %s: %s", self._where, path, exc)
