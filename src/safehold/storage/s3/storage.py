"""Amazon S3 and S3-compatible servers as storage (boto3).

The location is ``s3:https://host:port/bucket/prefix`` (any compatible endpoint) or
``s3:bucket/prefix`` (AWS); options are described in :mod:`safehold.storage.s3.settings`
and docs/storage/s3.md. Object ``name`` is the key ``prefix/name``.

**Atomic put.** S3 makes an object visible only when its PUT (or CompleteMultipartUpload)
succeeds, so readers never see a partial object. Objects above ``part_size`` go up as a
multipart upload that is aborted on failure, so failed attempts leave no billed parts
behind (best effort: a killed process cannot abort; see the docs for the lifecycle rule).

**Exclusive create** sends ``If-None-Match: *``; the server answers 412 when the key
exists. AWS (since 2024), MinIO, Ceph and SeaweedFS honour it. A server that answers
501 NotImplemented makes this module fall back, for that store, to a HEAD before the
PUT, which is not atomic (documented as best effort).

**Errors.** Every botocore/urllib3 failure is translated once, by
:func:`safehold.storage.s3.errors.translate`.
botocore's own retries are off: retrying lives in ``RetryingStorage`` alone.

**Object Lock (immutable mode).** With ``object_lock_days`` the bucket is created with
Object Lock (which turns versioning on) and every object but locks and trash records is
written with a retention of that many days in ``object_lock_mode`` (GOVERNANCE or
COMPLIANCE): packs, index files, snapshots, key files, the config and chain markers. A
client holding the repository's credentials cannot delete or replace those versions until
the period ends. Locks and trash records are deleted in normal operation (every command
releases its lock; prune removes a record once swept), so they carry none: losing one
costs nothing that retention protects. Deleting removes every version of the name,
newest first (a refreshed lock has several; removing only the newest would bring an
older one back); a version still under retention raises :class:`ObjectLocked` with its
end date, and the object stays whole. :meth:`S3Storage.extend_retention` lengthens an
object's retention (storage.capabilities.RetentionKeeper; see repository.retention for why).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import botocore.exceptions as bce

from safehold.errors import (
    ObjectExists,
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.model import ObjectInfo
from safehold.storage.base import check_name, clock_reading, http_date
from safehold.storage.common import (
    check_length,
    check_range,
    empty_read,
    past_end,
    short_read,
)
from safehold.storage.s3.client import open_client
from safehold.storage.s3.errors import AUTH_CODES, SDK_ERRORS, ObjectLocked, translate
from safehold.storage.s3.settings import S3Settings, parse_settings

__all__ = ["UNRETAINED_PREFIXES", "S3Storage", "from_location", "retained"]

# With Object Lock, every object is retained except these, which are deleted in normal
# operation (docs/format.md, "Layout"): locks by the command that took them, trash records
# by the prune that swept them. Retaining them would only leave stale locks and swept
# records behind; what they refer to is retained on its own.
UNRETAINED_PREFIXES = ("locks/", "trash/")
# A name with more versions than this is not deleted (a loop guard: safehold writes a name
# at most a few times, a lock once per refresh).
_MAX_VERSIONS = 1000
# get_into copies a response body in pieces of this size (below the allocator's mmap
# threshold, so their memory is reused rather than faulted in for every piece).
_READ_PIECE = 512 * 1024


def retained(name: str) -> bool:
    """Whether an object of this name is written with a retention in immutable mode."""
    return not name.startswith(UNRETAINED_PREFIXES)


class S3Storage:
    """One bucket (and key prefix) of an S3 service. See the module docstring."""

    def __init__(self, settings: S3Settings, *, create: bool = False) -> None:
        self._s = settings
        self._where = settings.describe()
        self._prefix = f"{settings.prefix}/" if settings.prefix else ""
        self._conditional_put = True  # cleared if the server rejects If-None-Match
        self._lock = threading.Lock()
        self._client, self._region = open_client(settings)
        if create and settings.create_bucket:
            self._ensure_bucket()

    # --- setup ----------------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        bucket = self._s.bucket
        try:
            self._client.head_bucket(Bucket=bucket)
            return
        except bce.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise translate(exc, self._s, "check the bucket") from exc
        except SDK_ERRORS as exc:
            raise translate(exc, self._s, "check the bucket") from exc
        args: dict[str, Any] = {"Bucket": bucket}
        if self._region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        if self._s.object_lock_days:
            args["ObjectLockEnabledForBucket"] = True  # also turns on versioning
        try:
            self._client.create_bucket(**args)
        except bce.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # a concurrent init made it (or it is someone else's: puts will say)
            if code == "AccessDenied" or code in AUTH_CODES:
                raise StoragePermissionDenied(
                    f"{self._where}: the bucket {bucket!r} does not exist and these "
                    f"credentials may not create it ({code})",
                    hint="create the bucket with an account that may, or grant "
                    f"s3:CreateBucket to the credentials from {self._s.credential_source()}",
                ) from exc
            raise translate(exc, self._s, "create the bucket") from exc
        except SDK_ERRORS as exc:
            raise translate(exc, self._s, "create the bucket") from exc

    # --- plumbing -------------------------------------------------------------------------

    def describe(self) -> str:
        return self._where

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"S3Storage({self._where!r})"

    def _key(self, name: str) -> str:
        return self._prefix + check_name(name)

    def server_time(self) -> dt.datetime | None:
        """The service's clock (storage.capabilities.ServerClock): the ``Date`` header of a HEAD on
        the bucket. An error answer counts too: it comes from the same server's clock."""
        started = time.monotonic()
        try:
            reply = self._client.head_bucket(Bucket=self._s.bucket)
        except bce.ClientError as exc:
            reply = exc.response
        except SDK_ERRORS:
            return None
        ended = time.monotonic()
        stamp = http_date(reply.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date"))
        return None if stamp is None else clock_reading(stamp, started, ended, resolution=1.0)

    def _call(self, action: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(Bucket=self._s.bucket, **kwargs)
        except SDK_ERRORS as exc:
            raise translate(exc, self._s, action) from exc

    def _put_args(self, name: str) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self._s.storage_class:
            args["StorageClass"] = self._s.storage_class
        if self._s.sse:
            args["ServerSideEncryption"] = self._s.sse
            if self._s.sse_kms_key_id:
                args["SSEKMSKeyId"] = self._s.sse_kms_key_id
        if self._s.object_lock_days and retained(name):
            until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self._s.object_lock_days)
            args["ObjectLockMode"] = self._s.object_lock_mode
            args["ObjectLockRetainUntilDate"] = until
        return args

    # --- put ------------------------------------------------------------------------------

    def put(self, name: str, data: bytes | memoryview, *, exclusive: bool = False) -> None:
        key = self._key(name)
        view = memoryview(data)
        action = f"write {name!r}"
        conditional = exclusive and self._conditional_put
        if exclusive and not conditional and self._exists(name):
            raise ObjectExists(f"{self._where}: cannot {action}: the object already exists")
        try:
            if view.nbytes > self._s.part_size:
                self._put_multipart(key, name, view, conditional)
            else:
                args = self._put_args(name)
                if conditional:
                    args["IfNoneMatch"] = "*"
                self._call(action, "put_object", Key=key, Body=view.tobytes(), **args)
        except StorageError as err:
            if conditional and _not_implemented(err):
                with self._lock:
                    self._conditional_put = False
                self.put(name, data, exclusive=exclusive)
                return
            raise

    def _put_multipart(self, key: str, name: str, view: memoryview, conditional: bool) -> None:
        action = f"write {name!r}"
        upload = self._call(action, "create_multipart_upload", Key=key, **self._put_args(name))
        upload_id = upload["UploadId"]
        try:
            parts = []
            size = self._s.part_size
            for number, start in enumerate(range(0, view.nbytes, size), start=1):
                body = view[start : start + size].tobytes()
                done = self._call(
                    action, "upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
                parts.append({"ETag": done["ETag"], "PartNumber": number})
            extra = {"IfNoneMatch": "*"} if conditional else {}
            self._call(
                action,
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
        except BaseException:
            # Parts of an unfinished upload are stored (and billed) until aborted.
            try:
                self._client.abort_multipart_upload(
                    Bucket=self._s.bucket, Key=key, UploadId=upload_id
                )
            except SDK_ERRORS:
                pass  # the server is unreachable: the bucket's lifecycle rule cleans up
            raise

    def _exists(self, name: str) -> bool:
        try:
            self.stat(name)
        except ObjectNotFound:
            return False
        return True

    # --- get / stat -----------------------------------------------------------------------

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        if length == 0:
            # An empty Range is not expressible in HTTP; the size alone decides.
            return empty_read(lambda: self.stat(name).size, self._where, name, offset)
        response = self._get_object(name, offset, length)
        if response is None:
            return past_end(lambda: self.stat(name).size, self._where, name, offset, length)
        try:
            data: bytes = response["Body"].read()
        except SDK_ERRORS as exc:
            raise translate(exc, self._s, f"read {name!r}") from exc
        check_length(self._where, name, data, offset, length)
        self._check_body(name, len(data), response)
        return data

    def get_into(self, name: str, offset: int, out: memoryview) -> None:
        """``get`` into the caller's buffer (see ``storage.capabilities.read_into``): the body is
        copied in pieces small enough for the allocator to reuse, instead of being joined
        into one new multi-MiB object per read, each of whose pages is faulted in afresh."""
        length = len(out)
        check_range(offset, length)
        if length == 0:
            empty_read(lambda: self.stat(name).size, self._where, name, offset)
            return
        response = self._get_object(name, offset, length)
        if response is None:
            past_end(lambda: self.stat(name).size, self._where, name, offset, length)
            return
        body = response["Body"]
        got = 0
        try:
            while got < length:
                piece = body.read(min(_READ_PIECE, length - got))
                if not piece:
                    break
                out[got : got + len(piece)] = piece
                got += len(piece)
        except SDK_ERRORS as exc:
            raise translate(exc, self._s, f"read {name!r}") from exc
        finally:
            body.close()
        self._check_body(name, got, response)
        if got != length:
            raise short_read(self._where, name, offset + got, offset, length)

    def _get_object(self, name: str, offset: int, length: int | None) -> Any:
        """GetObject of the range; None when the server refuses the range (it starts at
        or past the end)."""
        args: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            args["Range"] = f"bytes={offset}-{end}"
        action = f"read {name!r}"
        try:
            return self._client.get_object(Bucket=self._s.bucket, Key=self._key(name), **args)
        except bce.ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) == "InvalidRange":
                return None
            raise translate(exc, self._s, action) from exc
        except SDK_ERRORS as exc:
            raise translate(exc, self._s, action) from exc

    def _check_body(self, name: str, got: int, response: Any) -> None:
        expected = response.get("ContentLength")
        if expected is not None and got != expected:
            # The connection closed early without an error (a proxy cut it).
            raise TransientStorageError(f"{self._where}: could not read {name!r} (short body)")

    def stat(self, name: str) -> ObjectInfo:
        head = self._call(f"stat {name!r}", "head_object", Key=self._key(name))
        return ObjectInfo(name, int(head["ContentLength"]))

    # --- list -----------------------------------------------------------------------------

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = self._prefix + prefix
        cut = len(self._prefix)
        action = f"list {prefix or '/'}"
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Prefix": full}
            if token:
                args["ContinuationToken"] = token
            try:
                page = self._client.list_objects_v2(Bucket=self._s.bucket, **args)
            except bce.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code", "")) == "NoSuchBucket":
                    return  # no bucket, no objects (as a missing folder for local)
                raise translate(exc, self._s, action) from exc
            except SDK_ERRORS as exc:
                raise translate(exc, self._s, action) from exc
            for item in page.get("Contents", ()):
                key = item["Key"]
                if key.endswith("/"):
                    continue  # a "folder" marker made by some consoles, not an object
                yield ObjectInfo(key[cut:], int(item["Size"]))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # --- delete ---------------------------------------------------------------------------

    def delete(self, name: str) -> None:
        key = self._key(name)
        action = f"delete {name!r}"
        # S3 deletes of a missing key succeed; the Protocol wants ObjectNotFound: look first.
        head = self._call(action, "head_object", Key=key)
        if not self._s.object_lock_days:
            self._call(action, "delete_object", Key=key)
            return
        # A versioned bucket: a plain delete would only hide the object behind a delete
        # marker (and keep paying for it). Remove its versions, newest first, until the
        # name is gone; the server refuses a version under retention, which then stays.
        for _ in range(_MAX_VERSIONS):
            version = head.get("VersionId")
            try:
                if version:
                    self._call(action, "delete_object", Key=key, VersionId=version)
                else:  # written before versioning was on: the plain delete removes it
                    self._call(action, "delete_object", Key=key)
            except StoragePermissionDenied as err:
                raise self._refused(name, head, err) from err
            if not version:
                return
            try:
                head = self._call(action, "head_object", Key=key)
            except ObjectNotFound:
                return
        raise StorageError(
            f"{self._where}: cannot delete {name!r}: it has more than {_MAX_VERSIONS} versions",
            hint="remove its old versions with the provider's tools, then run the command again",
        )

    # --- retention (storage.capabilities.RetentionKeeper) ----------------------------------------

    def keeps_retention(self) -> bool:
        return bool(self._s.object_lock_days)

    def extend_retention(self, name: str) -> bool:
        """A new end, ``object_lock_days`` from now, for the current version of ``name``
        when less than half the period is left (or it has none: written before immutable
        mode was on). Lengthening needs only s3:PutObjectRetention, never a bypass; the
        version keeps its mode (COMPLIANCE cannot become GOVERNANCE)."""
        if not self._s.object_lock_days or not retained(name):
            return False
        key = self._key(name)
        action = f"extend the retention of {name!r}"
        head = self._call(action, "head_object", Key=key)
        period = dt.timedelta(days=self._s.object_lock_days)
        now = dt.datetime.now(dt.UTC)
        until = head.get("ObjectLockRetainUntilDate")
        if isinstance(until, dt.datetime) and until - now >= period / 2:
            return False
        mode = str(head.get("ObjectLockMode") or self._s.object_lock_mode).upper()
        version = {"VersionId": head["VersionId"]} if head.get("VersionId") else {}
        self._call(
            action,
            "put_object_retention",
            Key=key,
            Retention={"Mode": mode, "RetainUntilDate": now + period},
            **version,
        )
        return True

    def _refused(
        self, name: str, head: Mapping[str, Any], err: StoragePermissionDenied
    ) -> StoragePermissionDenied:
        """Why the server refused to delete a version, from the HEAD taken before."""
        where = f"{self._where}: cannot delete {name!r}"
        until = head.get("ObjectLockRetainUntilDate")
        mode = str(head.get("ObjectLockMode") or "").upper()
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return ObjectLocked(
                f"{where}: it is under an S3 Object Lock legal hold",
                hint="it can be removed once the hold is lifted",
            )
        if isinstance(until, dt.datetime) and until > dt.datetime.now(dt.UTC):
            until = until.astimezone(dt.UTC)
            return ObjectLocked(
                f"{where}: it is under S3 Object Lock {mode or 'retention'} retention until "
                f"{until:%Y-%m-%d %H:%M} UTC",
                hint="it can be removed after that date; prune and forget leave it until then",
                until=until,
            )
        if until is None and not mode:
            # The HEAD did not show the lock (no s3:GetObjectRetention): the likely reason.
            return ObjectLocked(
                f"{where}: the server refused (S3 Object Lock retention or legal hold?)",
                hint="it can be removed once its retention ends",
            )
        return err  # its retention is over: a permission is missing (s3:DeleteObjectVersion)


def _not_implemented(err: StorageError) -> bool:
    return "NotImplemented" in err.message or "(501)" in err.message


def from_location(
    rest: str, *, create: bool, options: Mapping[str, object] | None = None
) -> S3Storage:
    """Open ``s3:rest``; with ``create`` (repository init) make the bucket if missing."""
    return S3Storage(parse_settings(rest, options), create=create)
