"""Storage: named byte objects, nothing more.

A backend stores immutable-by-convention objects under ``/``-separated names and knows
nothing of the repository format. Each backend is a package of the same files:

* ``settings`` — the location string and the options, validated (no connection made);
* ``client`` — the SDK's client or session, built from the settings;
* ``errors`` — the SDK's exceptions as :mod:`safehold.errors` classes, translated once
  (``SDK_ERRORS`` are what the backend catches, ``translate`` classifies them);
* ``storage`` — the ``Storage`` itself, its guarantees in its docstring;

and its ``__init__`` exports the storage class and ``from_location``: ``local``, ``s3``,
``azure``, ``gcs``, ``sftp``, ``swift`` (``local`` has no ``client``: files need no
session). ``memory`` stays one module: it has no settings, client or foreign errors.
Only a backend's package imports its SDK, and no backend imports another (an import-linter
contract).

Shared by all: :mod:`.base` (the ``Storage`` Protocol and its guarantees),
:mod:`.capabilities` (optional extras as Protocols, found through wrappers by
:func:`~safehold.storage.capabilities.capability`), :mod:`.transient` (which failures are
worth a retry), :mod:`.common` (ranged-read checks, option parsing), :mod:`.location`
(location string -> backend). Cross-cutting behaviour (retry, concurrency limits, fault
injection) lives in :mod:`.wrappers` and is composed by :mod:`safehold.app` only.
"""

from safehold.storage.base import Storage
from safehold.storage.capabilities import capability

__all__ = ["Storage", "capability"]
