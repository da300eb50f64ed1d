"""One error hierarchy for all of safehold.

Every error carries the exit code the CLI returns for it and the HTTP status the API answers
with, so that a single place in each front end maps errors to outcomes. Messages say what
happened and what the user can do about it; they never contain secrets.
"""

from __future__ import annotations

from datetime import datetime


class ExitCode:
    """Documented process exit codes (also listed in README.md)."""

    OK = 0
    FAILURE = 1  # an unexpected or unclassified failure
    USAGE = 2  # bad arguments, bad configuration, a source path that does not exist
    PARTIAL = 3  # backup saved, but some files could not be read (listed in the snapshot)
    INTEGRITY = 4  # check found damage, or data did not match its id
    STORAGE = 5  # the storage failed: unreachable, full, permission denied
    SOURCE = 6  # a source command failed; no snapshot was saved
    TARGET = 7  # the restore target could not be written (full disk, permissions)
    SKIPPED = 8  # a pre-backup-check hook said no: nothing was backed up, by design
    IN_PROGRESS = 9  # a run of that source is already under way (exit_if_in_progress)
    NO_REPOSITORY = 10  # nothing (or not a repository) at that location
    LOCKED = 11  # the repository is locked by another live process
    WRONG_PASSWORD = 12  # no key in the repository opens with that password
    OVERDUE = 13  # check --max-age: a group's newest snapshot is too old (none: too)
    DATABASE = 14  # the service's database could not be started, reached or logged in to
    INTERRUPTED = 130


class SafeholdError(Exception):
    """Base of every error safehold raises on purpose."""

    exit_code: int = ExitCode.FAILURE
    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(SafeholdError):
    """The command or its arguments are wrong: the user must change what they asked (exit 2)."""

    exit_code = ExitCode.USAGE
    http_status = 400


class ConfigError(UsageError):
    """The configuration file (or an option standing for it) is invalid; the message names
    the value."""


class SourceNotFound(UsageError):
    """A path or source given to back up does not exist."""

    http_status = 404


class SourceError(SafeholdError):
    """A source (a command, a database dump) failed; nothing was saved as complete."""

    exit_code = ExitCode.SOURCE
    http_status = 502


class TargetError(SafeholdError):
    """Writing restored data failed (the target disk is full, or not writable)."""

    exit_code = ExitCode.TARGET
    http_status = 507


# --- storage -----------------------------------------------------------------------------


class StorageError(SafeholdError):
    """A permanent storage failure: retrying the same call will not help."""

    exit_code = ExitCode.STORAGE
    http_status = 502


class TransientStorageError(StorageError):
    """A failure that may go away by itself (timeout, reset, throttling): worth retrying."""

    http_status = 503


class ObjectNotFound(StorageError):
    """No object of that name is stored (never written, or deleted meanwhile)."""

    http_status = 404


class ObjectExists(StorageError):
    """An exclusive create found the name taken."""

    http_status = 409


class StorageFull(StorageError):
    """The storage has no room (disk, quota) for the write."""

    http_status = 507


class StoragePermissionDenied(StorageError):
    """The storage refused the call for these credentials (or, as a subclass, for retention)."""

    http_status = 403


class ObjectRetained(StoragePermissionDenied):
    """The object may not be deleted yet: a retention period (S3 Object Lock, an
    immutability policy) or a legal hold protects it. Prune leaves it for a later run;
    forget reports the snapshot as retained. ``until`` is the end of the period when the
    storage told it (None: unknown, or a legal hold without end)."""

    def __init__(
        self, message: str, *, hint: str | None = None, until: datetime | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.until = until


# --- repository --------------------------------------------------------------------------


class RepositoryError(SafeholdError):
    """Base of the errors about the repository itself rather than its storage."""


class RepositoryNotFound(RepositoryError):
    """Nothing, or not a safehold repository, is at the location (exit 10)."""

    exit_code = ExitCode.NO_REPOSITORY
    http_status = 404


class RepositoryExists(RepositoryError):
    """``init`` found a repository at the location already."""

    exit_code = ExitCode.USAGE
    http_status = 409


class WrongPassword(RepositoryError):
    """No key file of the repository opens with the password given (exit 12)."""

    exit_code = ExitCode.WRONG_PASSWORD
    http_status = 401


class RepositoryLocked(RepositoryError):
    """Another live process holds a lock that conflicts with the one asked for (exit 11)."""

    exit_code = ExitCode.LOCKED
    http_status = 423


class ClockSkew(RepositoryError):
    """This machine's clock and the storage's disagree by more than prune's safety margin:
    deleting now could take data a process on another machine is about to use."""


class IntegrityError(RepositoryError):
    """Stored data is damaged: a failed authentication tag, a wrong hash, a bad header."""

    exit_code = ExitCode.INTEGRITY
    http_status = 500


class FormatError(IntegrityError):
    """An object does not follow docs/format.md (unknown version, type or id)."""


class SnapshotNotFound(RepositoryError):
    """No snapshot matches the id prefix or filters given."""

    exit_code = ExitCode.USAGE
    http_status = 404


# --- the service's database ------------------------------------------------------------


class DatabaseError(SafeholdError):
    """The service's database (its catalog and job queue) could not be set up or used."""

    exit_code = ExitCode.DATABASE
    http_status = 503


class DatabaseNotInstalled(DatabaseError):
    """The private cluster needs PostgreSQL's server programs, and they are not there."""


class DatabaseUnreachable(DatabaseError):
    """No connection: the server is down, the address wrong, or the network in between."""


class DatabaseAuthFailed(DatabaseError):
    """The server refused the user or password of the database URL."""

    http_status = 502


# --- the REST API ------------------------------------------------------------------------


class NotFound(UsageError):
    """No such object, or one the caller may not see: the API never tells the two apart, so
    that a token of one project cannot learn what another project holds."""

    http_status = 404


class Conflict(UsageError):
    """The request clashes with what exists: a name taken, an object in use, a plan the
    configuration file owns (read-only through the API), a run that has ended."""

    http_status = 409


class Unauthenticated(UsageError):
    """No token, or one that is unknown, revoked or malformed (the reply never says which)."""

    http_status = 401


class Forbidden(UsageError):
    """The token's role does not allow the call (in its own project: other projects' objects
    are :class:`NotFound`)."""

    http_status = 403


class RequestTooLarge(UsageError):
    """The request's body is larger than the API accepts."""

    http_status = 413


class TooManyRequests(UsageError):
    """Too many failed token checks from this address: wait ``retry_after`` seconds."""

    http_status = 429

    def __init__(self, message: str, *, hint: str | None = None, retry_after: int = 60) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class ServiceKeyError(SafeholdError):
    """The service's secret key is missing, unreadable, or not the one the catalog's
    secrets were sealed with (another machine's key file, or none)."""

    exit_code = ExitCode.USAGE
    http_status = 500


class Interrupted(SafeholdError):
    """The user interrupted the command (Ctrl-C, SIGTERM); exit 130."""

    exit_code = ExitCode.INTERRUPTED
