"""S3 errors: every botocore/urllib3 failure as a safehold storage error, translated once.

:func:`translate` is the one place that reads botocore's exceptions and S3's error codes;
:data:`SDK_ERRORS` are the roots the backend catches around every SDK call (anything else
is a bug and propagates). ``tests/unit/storage/test_translation.py`` fails when botocore or
urllib3 gains an exception class that these roots do not cover.
"""

from __future__ import annotations

import botocore.exceptions as bce
import urllib3.exceptions

from safehold.errors import (
    ObjectExists,
    ObjectNotFound,
    ObjectRetained,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.s3.settings import S3Settings
from safehold.storage.transient import transient_status

__all__ = ["AUTH_CODES", "SDK_ERRORS", "ObjectLocked", "translate"]

#: The SDK exceptions the backend translates; anything else is a bug and propagates. Beside
#: the two hierarchies: service-model errors of a broken botocore install, and a proxy
#: (HTTPS_PROXY) of a scheme urllib3 cannot use (a ValueError, not an HTTPError).
SDK_ERRORS: tuple[type[BaseException], ...] = (
    bce.BotoCoreError,
    bce.ClientError,
    bce.UndefinedModelAttributeError,
    urllib3.exceptions.HTTPError,
    urllib3.exceptions.ProxySchemeUnsupported,
    OSError,
)

AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
        "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)  # fmt: skip
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
        "TooManyRequestsException", "RequestThrottled", "RequestTimeout", "InternalError",
        "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted",
        "RequestTimeTooSkewed",
    }
)  # fmt: skip
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})


class ObjectLocked(ObjectRetained):
    """The object is under S3 Object Lock retention (or a legal hold) and cannot be
    deleted yet."""


def translate(exc: BaseException, settings: S3Settings, action: str) -> StorageError:
    """Classify an SDK failure (one of :data:`SDK_ERRORS`) while trying to ``action`` as a
    safehold storage error."""
    where = settings.describe()
    if isinstance(exc, bce.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING_CODES:
            return ObjectNotFound(f"{where}: cannot {action}: no such object")
        if code == "NoSuchBucket":
            return ObjectNotFound(
                f"{where}: cannot {action}: the bucket {settings.bucket!r} does not exist",
                hint="check the bucket name, or run `safehold init` to create the repository",
            )
        if code in ("PreconditionFailed", "412") or status == 412:
            return ObjectExists(f"{where}: cannot {action}: the object already exists")
        if code in AUTH_CODES or code == "AccessDenied" or status in (401, 403):
            return _denied(where, action, code or str(status), settings)
        if code == "InvalidBucketName":
            return StorageError(
                f"{where}: the bucket name {settings.bucket!r} is not valid",
                hint="bucket names are 3 to 63 lowercase letters, digits, dots and hyphens",
            )
        if code == "InvalidRequest" and settings.object_lock_days:
            return StorageError(
                f"{where}: could not {action} ({code}): is Object Lock enabled on the bucket?",
                hint="object_lock_days needs a bucket created with Object Lock; let "
                "`safehold init` create the bucket, or enable Object Lock on it",
            )
        if code in _TRANSIENT_CODES or transient_status(status):
            return TransientStorageError(
                f"{where}: could not {action} ({code or status}); may be temporary"
            )
        return StorageError(f"{where}: could not {action} ({code or status})")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return StoragePermissionDenied(
            f"{where}: no S3 credentials found",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give access_key_id/"
            "secret_access_key or profile in the destination's options",
        )
    if isinstance(exc, bce.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return StorageError(
            f"{where}: the server's TLS certificate is not trusted",
            hint="install its CA (or set AWS_CA_BUNDLE to the CA file)",
        )
    if isinstance(exc, bce.ConnectTimeoutError | bce.ReadTimeoutError):
        return TransientStorageError(
            f"{where}: could not {action}: the server did not answer in time "
            f"(connect_timeout={settings.connect_timeout:g} s, "
            f"read_timeout={settings.read_timeout:g} s)",
            hint="raise read_timeout for slow links; check that the endpoint is up",
        )
    if isinstance(exc, bce.EndpointConnectionError):
        return TransientStorageError(
            f"{where}: could not {action}: cannot connect to the endpoint",
            hint="check that the server is up and endpoint_url is right",
        )
    if isinstance(
        exc,
        bce.HTTPClientError
        | bce.ResponseStreamingError
        | bce.IncompleteReadError
        | bce.ChecksumError
        | urllib3.exceptions.HTTPError
        | OSError,
    ):
        return TransientStorageError(f"{where}: could not {action} ({type(exc).__name__})")
    if isinstance(exc, bce.ProfileNotFound):
        return StoragePermissionDenied(
            f"{where}: the AWS profile is not defined",
            hint="check the profile option / AWS_PROFILE and ~/.aws/config",
        )
    return StorageError(f"{where}: could not {action} ({type(exc).__name__})")


def _denied(where: str, action: str, code: str, settings: S3Settings) -> StoragePermissionDenied:
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        problem = "the server rejected the credentials (wrong access key or secret)"
    elif code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
        problem = "the session token is expired or invalid"
    else:
        problem = "access denied"
    return StoragePermissionDenied(
        f"{where}: cannot {action}: {problem} ({code})",
        hint=f"the credentials come from {settings.credential_source()}; check them and "
        "their permissions on the bucket",
    )
