"""Every exception class a backend's SDK defines is translated into a safehold error.

A backend catches its :data:`SDK_ERRORS` around every SDK call and hands them to its
``errors.translate``. Anything outside those roots escapes untranslated: the retry wrapper
would not retry it and the CLI would print a traceback. So for each backend these tests list
the exception classes of its SDK's modules, build one of each, and check that the backend
catches it and translates it into a :class:`StorageError`. An SDK upgrade that adds an
exception outside the roots fails here, naming it.

Where an exception carries an HTTP status, the translation must also agree with the shared
transient statuses (:mod:`safehold.storage.transient`).
"""

from __future__ import annotations

import importlib
import inspect
import string
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import pytest

from safehold.errors import (
    ObjectNotFound,
    StorageError,
    StoragePermissionDenied,
    TransientStorageError,
)
from safehold.storage.transient import TRANSIENT_STATUS

Translate = Callable[[BaseException], StorageError]


# Classes an SDK module defines that no call safehold makes can raise, each with the reason.
NOT_RAISED = {
    # Raised only by api_core's asynchronous REST transports; the storage client is sync.
    "google.api_core.exceptions.AsyncRestUnsupportedParameterError",
}


def sdk_exceptions(*names: str) -> list[type[BaseException]]:
    """The exception classes (no warnings) that the modules ``names`` define or export from
    their own package (``google.*`` packages are namespaces: their package is two deep)."""
    found: dict[str, type[BaseException]] = {}
    for name in names:
        module: ModuleType = importlib.import_module(name)
        parts = name.split(".")
        package = ".".join(parts[:2] if parts[0] == "google" else parts[:1])
        for value in vars(module).values():
            key = f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and not issubclass(value, Warning)
                and (value.__module__ + ".").startswith(package + ".")
                and key not in NOT_RAISED
            ):
                found[key] = value
    return [found[key] for key in sorted(found)]


class _Response:
    """Enough of an HTTP response for exceptions whose constructor reads one."""

    status_code = 500
    reason = "Internal Server Error"
    headers: dict[str, str] = {}
    content_type = "text/plain"
    request = type("Request", (), {"url": "http://127.0.0.1:9/x", "method": "GET"})()

    def text(self, encoding: str | None = None) -> str:
        return ""

    def body(self) -> bytes:
        return b""

    length_remaining = 0

    def tell(self) -> int:
        return 0


def instance(cls: type[BaseException]) -> BaseException:
    """One exception of class ``cls``, made as its SDK would make it where the constructor
    needs more than a message."""
    fmt = getattr(cls, "fmt", None)
    if isinstance(fmt, str):  # botocore: keyword arguments fill a format string
        fields: dict[str, object] = {f: "x" for _, f, _, _ in string.Formatter().parse(fmt) if f}
        for name, param in inspect.signature(cls).parameters.items():
            if param.default is param.empty and param.kind is param.POSITIONAL_OR_KEYWORD:
                fields.setdefault(name, {})  # WaiterError's last_response
        return cls(**fields)
    attempts: tuple[tuple[object, ...], ...] = (
        ("message",), (), ("message", "detail"), ("message", None, None), (_Response(),),
        ("message", "document", 0), (0, 0), (_Response(), b"0"),
    )  # fmt: skip
    for args in attempts:
        try:
            made = cls(*args)
            str(made), repr(made)  # messages are made from both
        except (TypeError, AttributeError):
            continue
        return made
    raise AssertionError(f"cannot make a {cls.__qualname__}: teach instance() its arguments")


def check_all(
    classes: Sequence[type[BaseException]],
    roots: tuple[type[BaseException], ...],
    translate: Translate,
    make: Callable[[type[BaseException]], BaseException] = instance,
) -> None:
    assert classes, "no exception classes found: the SDK's modules moved?"
    uncaught = [c.__qualname__ for c in classes if not issubclass(c, roots)]
    assert not uncaught, f"not caught by SDK_ERRORS, so never translated: {uncaught}"
    for cls in classes:
        error = translate(make(cls))
        assert isinstance(error, StorageError), cls


def check_status(error: StorageError, status: int, *, missing: type[StorageError]) -> None:
    """What an HTTP error answer of ``status`` must become."""
    if status == 404:
        assert isinstance(error, missing), (status, error)
    elif status in (401, 403):
        assert isinstance(error, StoragePermissionDenied), (status, error)
    elif status in TRANSIENT_STATUS:
        assert isinstance(error, TransientStorageError), (status, error)
    elif status >= 400 and status not in (412, 413, 416, 507):
        assert not isinstance(error, TransientStorageError), (status, error)


# --- s3 --------------------------------------------------------------------------------------


def test_s3() -> None:
    pytest.importorskip("boto3")
    import botocore.exceptions as bce

    from safehold.storage.s3.errors import SDK_ERRORS, translate
    from safehold.storage.s3.settings import parse_settings

    settings = parse_settings("http://127.0.0.1:9/bucket", None)

    def make(cls: type[BaseException]) -> BaseException:
        if issubclass(cls, bce.ClientError):
            reply: Any = {"Error": {"Code": "X"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
            return cls(reply, "GetObject")
        return instance(cls)

    check_all(
        sdk_exceptions("botocore.exceptions", "urllib3.exceptions"),
        SDK_ERRORS,
        lambda exc: translate(exc, settings, "read 'x'"),
        make,
    )
    for status in (400, 401, 403, 404, 408, 409, 429, 500, 501, 502, 503, 504, 505):
        reply = {"Error": {"Code": str(status)}, "ResponseMetadata": {"HTTPStatusCode": status}}
        error = translate(bce.ClientError(reply, "GetObject"), settings, "read")  # type: ignore[arg-type]
        check_status(error, status, missing=ObjectNotFound)


# --- azure -----------------------------------------------------------------------------------


def test_azure() -> None:
    pytest.importorskip("azure.storage.blob")
    from azure.core.exceptions import HttpResponseError

    from safehold.storage.azure.errors import SDK_ERRORS, Context, translate

    ctx = Context(where="azure:c/p", endpoint="http://127.0.0.1:9", container="c")
    check_all(
        sdk_exceptions("azure.core.exceptions", "azure.storage.blob"),
        SDK_ERRORS,
        lambda exc: translate(exc, ctx, "read 'x'", missing="object"),
    )
    for status in (400, 401, 403, 404, 408, 409, 429, 500, 501, 502, 503, 504, 505):
        exc = HttpResponseError("answer")
        exc.status_code = status
        check_status(translate(exc, ctx, "read", missing="object"), status, missing=ObjectNotFound)


# --- gcs -------------------------------------------------------------------------------------


def test_gcs() -> None:
    pytest.importorskip("google.cloud.storage")
    from google.api_core import exceptions as api_exceptions

    from safehold.storage.gcs.errors import SDK_ERRORS, Context, translate

    ctx = Context(where="gs:b/p", endpoint="http://127.0.0.1:9", bucket="b")
    check_all(
        sdk_exceptions(
            "google.api_core.exceptions",
            "google.auth.exceptions",
            "google.cloud.storage.exceptions",
            "requests.exceptions",
            "urllib3.exceptions",
        ),
        SDK_ERRORS,
        lambda exc: translate(exc, ctx, "read 'x'", missing="object"),
    )
    # Each HTTP error class of api_core stands for its status.
    for cls in sdk_exceptions("google.api_core.exceptions"):
        status = getattr(cls, "code", None)
        if isinstance(status, int) and issubclass(cls, api_exceptions.GoogleAPICallError):
            error = translate(cls("answer"), ctx, "read", missing="object")
            check_status(error, status, missing=ObjectNotFound)


# --- sftp ------------------------------------------------------------------------------------


def test_sftp() -> None:
    pytest.importorskip("paramiko")
    from safehold.storage.sftp.errors import SDK_ERRORS, Context, StatusError, translate

    ctx = Context(where="sftp:u@h:22/p", user="u", timeout=5.0)
    classes = sdk_exceptions("paramiko.ssh_exception", "paramiko.sftp")

    def make(cls: type[BaseException]) -> BaseException:
        if cls.__name__ == "NoValidConnectionsError":
            return cls({("127.0.0.1", 22): ConnectionRefusedError()})
        if cls.__name__ == "BadHostKeyException":
            import paramiko

            key = paramiko.ECDSAKey.generate()
            return cls("h", key, key)
        return instance(cls)

    check_all([*classes, StatusError], SDK_ERRORS, lambda e: translate(e, ctx, "read 'x'"), make)


# --- swift -----------------------------------------------------------------------------------


def test_swift() -> None:
    pytest.importorskip("swiftclient")
    from swiftclient.exceptions import ClientException

    from safehold.storage.swift.errors import SDK_ERRORS, Context, translate
    from safehold.storage.swift.settings import parse_options

    opts = parse_options({"auth_url": "http://127.0.0.1:9/auth/v1.0", "user": "u", "key": "k"})
    ctx = Context("swift:c/p", opts)
    check_all(
        sdk_exceptions(
            "swiftclient.exceptions", "requests.exceptions", "urllib3.exceptions", "http.client"
        ),
        SDK_ERRORS,
        lambda exc: translate(exc, ctx, "read 'x'"),
    )
    for status in (400, 401, 403, 404, 408, 409, 429, 500, 501, 502, 503, 504, 505):
        error = translate(ClientException("answer", http_status=status), ctx, "read")
        check_status(error, status, missing=ObjectNotFound)


# --- local -----------------------------------------------------------------------------------


def test_local() -> None:
    import builtins

    from safehold.storage.local.errors import SDK_ERRORS, translate_os_error

    classes = [
        value
        for value in vars(builtins).values()
        if isinstance(value, type) and issubclass(value, OSError)
    ]
    check_all(
        classes,
        SDK_ERRORS,
        lambda exc: translate_os_error(exc, where="local:/r", action="read 'x'"),  # type: ignore[arg-type]
    )
