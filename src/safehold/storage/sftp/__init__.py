"""A folder on an SFTP server (OpenSSH and others) as storage, through paramiko.

Location: ``sftp:[USER@]HOST[:PORT]/PATH`` — ``/PATH`` is absolute, and ``/~/PATH`` is
relative to the login folder, as in sftp URIs (``sftp:backup@host:2222/srv/repo``,
``sftp:backup@host/~/repo``). The scp-style ``sftp:USER@HOST:/srv/repo`` (absolute) and
``sftp:USER@HOST:repo`` (relative) work too, with the default port.
``docs/storage/sftp.md`` describes every option.

**Host keys.** The server's key is checked against a pin (the ``host_key`` option: a line of
``ssh-keyscan`` output or a ``SHA256:`` fingerprint) or else a known_hosts file. A mismatch
refuses the connection and says so; an unknown host is refused too, unless the user asked for
trust-on-first-use, which records the key in the known_hosts file.

**Sessions.** paramiko's ``SFTPClient`` cannot be shared between threads: a thread waiting
for its reply reads (and drops) replies meant for another. So each call borrows a whole
session — its own SSH connection and SFTP channel — from a pool of at most
``max_connections``, and gives it back when done. A session that failed below the SFTP
layer (a timeout, a reset, a closed connection) is thrown away together with the idle ones,
which likely met the same fate, and the error is transient: the retry wrapper tries again
and the pool connects afresh. Separate connections rather than channels on one connection
also keep clear of sshd's ``MaxSessions`` and let the kernel spread the work.

**Atomic, durable, exclusive put.** Data goes to a hidden temporary file (``.tmp-`` prefix,
never listed) in the object's folder, created with ``CREATE|EXCL``, is written with pipelined
requests, fsynced (``fsync@openssh.com``, where the server offers it) and renamed. A plain
put renames with ``posix-rename@openssh.com``, which replaces the target atomically. An
exclusive put uses the protocol's own ``RENAME``, which must fail when the target exists
(SFTP v3); OpenSSH implements it with ``link()`` + ``unlink()``, so of two writers exactly one
wins. Opening the final name with ``CREATE|EXCL`` would also be exclusive, but readers would
see a partial object while it is written. SFTP cannot fsync a folder, so the rename itself
is as durable as the server's filesystem makes it.

**Errors.** SFTP status codes become :mod:`safehold.errors` classes here and nowhere else;
anything below them (sockets, SSH) is a transient error.

Modules, the same in every backend package: ``settings`` (the location string and options),
``client`` (one SFTP session, the pool, and the connector that makes sessions), ``errors``
(status replies and broken connections as safehold errors), ``storage`` (the ``Storage``
itself); and ``keys`` (private keys and host-key trust, which the client uses). Only this
package imports paramiko.
"""

from __future__ import annotations

import logging

from safehold.storage.sftp.keys import fingerprint
from safehold.storage.sftp.settings import SftpOptions, SftpTarget, parse_location
from safehold.storage.sftp.storage import SftpStorage, from_location

__all__ = [
    "SftpOptions",
    "SftpStorage",
    "SftpTarget",
    "fingerprint",
    "from_location",
    "parse_location",
]

# paramiko logs every dropped connection at ERROR from its own thread; with no handler
# configured Python would print those to stderr next to our one translated error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
