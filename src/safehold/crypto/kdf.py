"""scrypt, and deriving a key ahead of time while the program starts.

Deriving the key-encryption key of a key file is the longest single step of opening a
repository (about 0.13 s here at the default cost, with a core to itself), and it needs
only the password and the key file's salt and parameters. :func:`derive_ahead` starts it
in a thread as soon as those are known, before the modules a command needs have been
imported; :func:`scrypt` called later with the same inputs takes that result instead of
computing it again. Only exactly equal inputs match, so a guess that turns out wrong
(another key file, another password) costs a derivation on an otherwise idle core and
changes nothing else.

This module imports only the standard library until it computes, so that the command line
can use it before anything heavy is loaded; scrypt itself (OpenSSL's, through
``cryptography``) releases the interpreter lock while it runs.
"""

from __future__ import annotations

import base64
import threading
from typing import Any

__all__ = ["KEK_LEN", "derive_ahead", "key_file_kdf", "scrypt"]

KEK_LEN = 32  # bytes of a key file's key-encryption key (an AES-256 key)

# Inputs -> (done, result). An entry is taken by the first scrypt() call that matches it.
_Inputs = tuple[bytes, bytes, int, int, int, int]
_ahead: dict[_Inputs, tuple[threading.Event, list[bytes]]] = {}
_lock = threading.Lock()
# Entries nobody took (the command failed before opening the repository) are dropped
# beyond this many, oldest first: a process that runs many commands keeps no backlog.
_MAX_AHEAD = 4


def _compute(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # Imported here: the module stays light for the command line's early start. (Not
    # hashlib.scrypt: it refuses working sets above 2 GiB, which `init --kdf-log2n 22` has.)
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password)


def scrypt(password: bytes, salt: bytes, *, n: int, r: int, p: int, length: int) -> bytes:
    """scrypt(password, salt, n, r, p) of ``length`` bytes (RFC 7914)."""
    with _lock:
        pending = _ahead.pop((password, salt, n, r, p, length), None)
    if pending is not None:
        done, result = pending
        done.wait()
        if result:
            return result[0]
    return _compute(password, salt, n, r, p, length)


def derive_ahead(password: bytes, salt: bytes, *, n: int, r: int, p: int, length: int) -> None:
    """Start scrypt of these inputs in a thread, for a later :func:`scrypt` to take."""
    key = (password, salt, n, r, p, length)
    done, result = threading.Event(), []

    def run() -> None:
        try:
            result.append(_compute(password, salt, n, r, p, length))
        except Exception:
            pass  # best effort: the later call computes it again and reports the problem
        finally:
            done.set()

    with _lock:
        if key in _ahead:
            return
        while len(_ahead) >= _MAX_AHEAD:
            del _ahead[next(iter(_ahead))]
        _ahead[key] = (done, result)
    threading.Thread(target=run, name="derive-ahead", daemon=True).start()


def key_file_kdf(doc: dict[str, Any]) -> tuple[bytes, int, int, int]:
    """``(salt, n, r, p)`` of a key file's JSON (docs/format.md, "Key files"); KeyError,
    ValueError or TypeError if they are missing or malformed."""
    salt = base64.b64decode(str(doc["salt"]).encode("ascii"), validate=True)
    return salt, int(doc["n"]), int(doc["r"]), int(doc["p"])
