"""Storage: named byte objects, nothing more.

A backend stores immutable-by-convention objects under ``/``-separated names and knows
nothing of the repository format. One backend per module; only that module imports its SDK
and translates the SDK's exceptions into :mod:`safehold.errors`. Cross-cutting behaviour
(retry, concurrency limits, fault injection) lives in :mod:`safehold.storage.wrappers` and is
composed by :mod:`safehold.app` only.
"""

from safehold.storage.base import Storage

__all__ = ["Storage"]
