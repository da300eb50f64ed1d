"""The swiftclient side of a Swift location: the token every thread shares, and the
authentication that gets it (TempAuth v1, or Keystone v3 password auth as one JSON POST).

python-swiftclient's module-level request functions are used, not its ``Connection``
class (see the package docstring for why); the storage keeps one HTTP connection per
thread.
"""

from __future__ import annotations

import json
import logging
import threading

from swiftclient import client as swift  # type: ignore[import-untyped]

from safehold.errors import StorageError, TransientStorageError
from safehold.storage.location import redact
from safehold.storage.swift.errors import AuthFailed
from safehold.storage.swift.settings import SwiftOptions
from safehold.storage.transient import transient_status

__all__ = ["Auth", "swift"]

# swiftclient logs every 4xx answer at INFO with a curl command line (an expected 404, a
# 412 on exclusive create); we translate those into errors, so quieten it unless the user
# configured its level. Tokens in its debug lines are cut to no visible characters.
if logging.getLogger("swiftclient").level == logging.NOTSET:
    logging.getLogger("swiftclient").setLevel(logging.WARNING)
swift.logger_settings["reveal_sensitive_prefix"] = 0


class Auth:
    """One token shared by every thread; renewed when a call reports it expired."""

    def __init__(self, opts: SwiftOptions, where: str) -> None:
        self._opts = opts
        self._where = where
        self._lock = threading.Lock()
        self._url = opts.storage_url
        self._token = opts.auth_token
        self._generation = 0

    @property
    def renewable(self) -> bool:
        """Whether a refused token can be renewed (not when the token and URL were given)."""
        return self._opts.storage_url is None

    def current(self) -> tuple[str, str, int]:
        """The storage URL, a token, and the token's generation (for :meth:`expired`),
        authenticating first when there is no token."""
        with self._lock:
            if self._url is None or self._token is None:
                self._url, self._token = self._authenticate()
                self._generation += 1
            return self._url, self._token, self._generation

    def expired(self, generation: int) -> None:
        """The token of ``generation`` was refused; the next :meth:`current` renews it."""
        with self._lock:
            if generation == self._generation and self.renewable:
                self._url = self._token = None

    def _authenticate(self) -> tuple[str, str]:
        opts = self._opts
        assert opts.auth_url is not None
        timeout = (opts.connect_timeout, opts.timeout)
        try:
            if opts.auth_version == "1":
                url, token = swift.get_auth_1_0(opts.auth_url, opts.user, opts.key, timeout=timeout)
                return str(url), str(token)
            return self._keystone_v3(timeout)
        except swift.ClientException as exc:
            if exc.http_status == 401:
                raise AuthFailed() from None
            raise self._service_error(exc.http_status, exc.http_reason) from None

    def _service_error(self, status: int | None, reason: str) -> StorageError:
        """The auth service answered, but not with a token (and not with 401)."""
        message = (
            f"{self._where}: the auth service at {redact(self._opts.auth_url or '')} "
            f"answered {status} {reason}".rstrip()
        )
        if status is None or transient_status(status):
            return TransientStorageError(message + "; may be temporary")
        return StorageError(message, hint="check auth_url and auth_version")

    def _keystone_v3(self, timeout: tuple[float, float]) -> tuple[str, str]:
        opts = self._opts
        assert opts.auth_url is not None
        base = opts.auth_url.rstrip("/")
        url = base + ("/auth/tokens" if base.endswith("/v3") else "/v3/auth/tokens")
        project: dict[str, object] = (
            {"id": opts.project_id}
            if opts.project_id
            else {"name": opts.project_name, "domain": {"name": opts.project_domain_name}}
        )
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": opts.username,
                            "domain": {"name": opts.user_domain_name},
                            "password": opts.password,
                        }
                    },
                },
                "scope": {"project": project},
            }
        }
        parsed, conn = swift.http_connection(url, timeout=timeout)
        try:
            conn.request(
                "POST",
                parsed.path,
                json.dumps(body),
                {"Content-Type": "application/json", "Accept": "application/json"},
            )
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        if resp.status == 401:
            raise AuthFailed()
        if resp.status != 201 or not resp.getheader("x-subject-token"):
            raise self._service_error(resp.status, resp.reason)
        token = str(resp.getheader("x-subject-token"))
        try:
            catalog = json.loads(raw)["token"].get("catalog", [])
        except (ValueError, KeyError, AttributeError, TypeError):
            raise StorageError(
                f"{self._where}: the auth service at {redact(opts.auth_url)} sent a token "
                "but no readable catalog",
                hint="check that auth_url is a Keystone v3 endpoint",
            ) from None
        for service in catalog:
            if service.get("type") != "object-store":
                continue
            for endpoint in service.get("endpoints", []):
                region = endpoint.get("region_id") or endpoint.get("region")
                if endpoint.get("interface") == opts.interface and (
                    opts.region_name is None or region == opts.region_name
                ):
                    return str(endpoint["url"]), token
        where = f" in region {opts.region_name!r}" if opts.region_name else ""
        raise StorageError(
            f"{self._where}: Keystone lists no {opts.interface} object-store endpoint{where}",
            hint="check region_name and interface (or OS_REGION_NAME, OS_INTERFACE)",
        )
