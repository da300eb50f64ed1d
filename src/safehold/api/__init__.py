"""The REST API (FastAPI) that ``safehold serve`` answers on, versioned under ``/api/v1``.

Concepts:

- **Tokens** (:mod:`.tokens`): ``shk_<id>_<secret>`` bearer tokens, stored as a hash and
  shown once; each belongs to one project and has one role (:mod:`.auth`).
- **Projects**: a token sees its own project's objects only; any other object is 404.
- **Errors** (:mod:`.errors`): the one place where safehold's errors become responses,
  ``{"error": {"code", "message", "hint"}}``.
- **Routes** (:mod:`.routes`): one module per resource.

The API reads the catalog and queues runs through the service's queue; it sits above the
service (an import-linter contract) and the service knows nothing of it: the command line
composes the two (:func:`.server.api_companion`).
"""

from __future__ import annotations

from safehold.api.app import create_app

__all__ = ["create_app"]
