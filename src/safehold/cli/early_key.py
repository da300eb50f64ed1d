"""Start deriving the repository key while the command's modules load.

Before parsing (which imports the command's modules: 0.06-0.1 s of start-up), the
repository location and the password are read the way :class:`Context` will read them,
for the cases that need no prompt and run nothing: a local folder given by ``-r/--repo``
or ``SAFEHOLD_REPOSITORY``, and a password from ``--password-file``,
``SAFEHOLD_PASSWORD_FILE`` or ``SAFEHOLD_PASSWORD``. The key file that opening tries first
(the cheapest well-formed one, see :mod:`safehold.repository.key_files`) then has its
key-encryption key derived in a thread (:func:`safehold.crypto.kdf.derive_ahead`). Key files
are checked with the same bounds as when opening (:func:`safehold.crypto.kdf.key_file_kdf`):
a malformed or hostile one is passed over, never derived. Everything here is a guess:
anything unusual (a remote location, a password command, options it does not know, many key
files) leaves the key to be derived when the repository is opened, as before, and a wrong
guess only costs the derivation on a spare core.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Sequence

from safehold.crypto.kdf import KEK_LEN, KeyFileKdf, derive_ahead, key_file_kdf
from safehold.storage.location import local_folder

__all__ = ["derive_key_ahead"]

_WITH_VALUE = ("--repo", "--password-file", "--password-command")
_FLAG_LETTERS = set("qh")  # short global flags that may come before r in one word
_MAX_KEY_FILES = 16  # more than this many: not worth reading them all just to guess
_MAX_KEY_FILE = 64 * 1024  # safehold.crypto.keys.MAX_KEY_FILE (not imported: it is heavy)


def _global_values(argv: Sequence[str]) -> dict[str, str]:
    """``--repo``, ``--password-file`` and ``--password-command`` as given anywhere before
    ``--`` (spelled out in full, with ``=VALUE`` or not; ``-r VALUE``, ``-rVALUE``,
    ``-qr VALUE``); the last one given wins, as with argparse."""
    found: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in _WITH_VALUE:
            if not eq:
                if i + 1 >= len(argv):
                    break
                i += 1
                value = argv[i]
            found[name] = value
        elif arg[:1] == "-" and arg[1:2] != "-" and "r" in arg:
            flags, _, rest = arg[1:].partition("r")  # -r X, -rX, -qr X
            if set(flags) <= _FLAG_LETTERS:
                if rest:
                    found["--repo"] = rest
                elif i + 1 < len(argv):
                    i += 1
                    found["--repo"] = argv[i]
        i += 1
    return found


def _password(given: dict[str, str]) -> bytes | None:
    # The order of cli.context.read_password: file, command, environment.
    path = given.get("--password-file") or os.environ.get("SAFEHOLD_PASSWORD_FILE")
    if path:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None  # a pipe (/dev/fd/N, a FIFO) can be read only once: leave it
        with open(path, "rb") as f:
            return f.read().rstrip(b"\r\n") or None
    if given.get("--password-command") or os.environ.get("SAFEHOLD_PASSWORD_COMMAND"):
        return None  # never run a command twice
    env = os.environ.get("SAFEHOLD_PASSWORD")
    return env.encode() if env else None


def derive_key_ahead(argv: Sequence[str]) -> bool:
    """Start deriving the first key file's key if ``argv`` and the environment make it
    clear which; returns whether a derivation was started."""
    try:
        given = _global_values(argv)
        location = given.get("--repo") or os.environ.get("SAFEHOLD_REPOSITORY")
        folder = local_folder(location) if location else None
        if folder is None:
            return False
        password = _password(given)
        if password is None:
            return False
        first = _first_key_file(os.path.join(folder, "keys"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    if first is None:
        return False
    return derive_ahead(
        password, first.salt, n=first.n, r=first.r, p=first.p, length=KEK_LEN, kind=first.kind
    )


def _first_key_file(keys: str) -> KeyFileKdf | None:
    """The scrypt inputs of the key file that opening tries first: the cheapest of those
    whose fields are within bounds, then by name. None if there is none or too many."""
    with os.scandir(keys) as entries:  # regular files only: never block on a pipe
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    if len(names) > _MAX_KEY_FILES:
        return None
    found: list[tuple[tuple[int, int], str, KeyFileKdf]] = []
    for name in names:
        try:
            with open(os.path.join(keys, name), "rb") as f:
                raw = f.read(_MAX_KEY_FILE + 1)
            if len(raw) > _MAX_KEY_FILE:
                continue
            kdf = key_file_kdf(json.loads(raw))
        except (ValueError, RecursionError):  # malformed: opening skips it too
            continue
        found.append((kdf.cost, name, kdf))
    return min(found, key=lambda f: f[:2])[2] if found else None
