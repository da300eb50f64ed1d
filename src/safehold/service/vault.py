"""The service's secret key, and the sealing of the secrets it keeps in the catalog.

Destinations made through the service (:mod:`.destinations`) carry credentials: a
repository password, a bucket's access key. The catalog keeps them only sealed with
AES-256-GCM under a 32-byte key that lives in a file beside the service, never in the
database: a copy of the database (a dump, a replica, a backup of the catalog) alone
reveals nothing.

A sealed value is laid out as::

    version (1) = 1 | nonce (12, random) | ciphertext | tag (16)

and is sealed with associated data naming the object it belongs to (for a destination
``b"safehold-destination\\0PROJECT\\0NAME"``): a sealed blob copied onto another row, or
another project's row, fails to open rather than lending its credentials there. The
version byte is authenticated too, so a later format cannot be confused with this one.

**The key file.** ``service: {key_file: PATH}`` in the configuration, else
``$SAFEHOLD_SERVICE_KEY_FILE``, else ``STATE_DIR/service.key``. It is made on first need
(mode 0600): a random key is written to a file of its own, then hard-linked to the name,
which succeeds for exactly one of several processes starting at once; the others read
the winner's key. A half-written key is therefore never seen under the name.

**The key check.** The catalog holds ``HMAC-SHA256(key, "safehold key check")`` in
``service_keys`` (one row, written by the first process that needs the key). A process
whose key differs (a second machine given the database but not the key file, which then
made a key of its own) stops with an error that says to copy the key file, instead of
failing later on every destination with an opaque authentication error. The check value
reveals nothing of the key (HMAC is a PRF), and it cannot open anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine, text

from safehold.errors import ServiceKeyError

__all__ = [
    "KEY_FILE_ENV",
    "Vault",
    "destination_aad",
    "key_check",
    "key_file_path",
    "load_or_create_key",
]

KEY_FILE_ENV = "SAFEHOLD_SERVICE_KEY_FILE"
KEY_LEN = 32
_VERSION = b"\x01"
_NONCE_LEN = 12
_CHECK_MESSAGE = b"safehold key check"
_FILE_PREFIX = "safehold-service-key-v1:"
_FIX = (
    "copy the key file from the machine that first ran the service (it is "
    "STATE_DIR/service.key there unless service.key_file says otherwise) to this machine, "
    "mode 0600, and point service.key_file (or $SAFEHOLD_SERVICE_KEY_FILE) at it"
)


def key_file_path(
    key_file: str | None, state_dir: Path, env: Mapping[str, str] | None = None
) -> Path:
    """Where the key lives: the configuration's ``service.key_file``, else
    ``$SAFEHOLD_SERVICE_KEY_FILE``, else ``STATE_DIR/service.key``."""
    env = os.environ if env is None else env
    if key_file:
        return Path(key_file)
    if env.get(KEY_FILE_ENV):
        return Path(env[KEY_FILE_ENV])
    return state_dir / "service.key"


def _parse(path: Path, raw: bytes) -> bytes:
    text_ = raw.decode("ascii", errors="replace").strip()
    if text_.startswith(_FILE_PREFIX):
        try:
            key = base64.b64decode(text_[len(_FILE_PREFIX) :], validate=True)
        except ValueError:
            key = b""
        if len(key) == KEY_LEN:
            return key
    raise ServiceKeyError(
        f"the service key file {path} is not a safehold service key",
        hint="restore it from its backup, or " + _FIX,
    )


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``, made there (0600) if there is none yet."""
    try:
        return _parse(path, path.read_bytes())
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ServiceKeyError(
            f"cannot read the service key file {path}: {exc.strerror}",
            hint="check its owner and mode (the service's user must read it; 0600)",
        ) from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (_FILE_PREFIX + base64.b64encode(os.urandom(KEY_LEN)).decode() + "\n").encode()
    # Written whole under a name of our own (O_EXCL: never someone else's file), then
    # linked to the real name: link() fails if another process got there first, and then
    # its key is the key. Readers never see a partly written file under the real name.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _parse(path, path.read_bytes())


def key_check(key: bytes) -> bytes:
    """The value the catalog keeps to recognise the key: it opens nothing."""
    return hmac.new(key, _CHECK_MESSAGE, hashlib.sha256).digest()


def destination_aad(project: str, name: str) -> bytes:
    """The associated data binding a sealed destination to its project and name."""
    return b"safehold-destination\0" + project.encode() + b"\0" + name.encode()


class Vault:
    """Seals and opens the service's secrets with its key, loaded (or made) on first use
    and checked against the catalog's key check value then."""

    def __init__(self, engine: Engine, key_file: Path) -> None:
        self.engine = engine
        self.key_file = key_file
        self._key: bytes | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Vault(key_file={str(self.key_file)!r})"  # never the key

    def _aead(self) -> AESGCM:
        with self._lock:
            if self._key is None:
                key = load_or_create_key(self.key_file)
                self._check(key)
                self._key = key
            return AESGCM(self._key)

    def _check(self, key: bytes) -> None:
        mine = key_check(key)
        with self.engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO service_keys (id, key_check) VALUES (1, :c) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                {"c": mine},
            )
            stored = db.execute(text("SELECT key_check FROM service_keys WHERE id = 1")).scalar()
        if stored is None or not hmac.compare_digest(bytes(stored), mine):
            raise ServiceKeyError(
                f"the service key in {self.key_file} is not the key this catalog's secrets "
                "were sealed with (a machine sharing the database without its key file?)",
                hint=_FIX,
            )

    def seal(self, plain: bytes, *, aad: bytes) -> bytes:
        """``plain`` sealed for the object ``aad`` names."""
        aead = self._aead()
        nonce = os.urandom(_NONCE_LEN)
        return _VERSION + nonce + aead.encrypt(nonce, plain, _VERSION + aad)

    def open(self, sealed: bytes, *, aad: bytes) -> bytes:
        """What :meth:`seal` sealed for ``aad``; an error if it was altered or moved."""
        aead = self._aead()
        sealed = bytes(sealed)
        if sealed[:1] != _VERSION or len(sealed) < 1 + _NONCE_LEN + 16:
            raise ServiceKeyError(
                "a sealed secret in the catalog has an unknown format",
                hint="a newer safehold wrote it; upgrade this one",
            )
        nonce, body = sealed[1 : 1 + _NONCE_LEN], sealed[1 + _NONCE_LEN :]
        try:
            return aead.decrypt(nonce, body, _VERSION + aad)
        except InvalidTag:
            # The key was checked: the row was altered, or copied from another object.
            raise ServiceKeyError(
                "a sealed secret in the catalog does not open: it was altered, or copied "
                "from another object",
                hint="create the object again (its credentials are lost)",
            ) from None
