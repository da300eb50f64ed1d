"""Source kinds by name, each loaded only when a configuration uses it.

Every module named here defines:

* ``Settings`` — a pydantic model of the source's configuration keys (``extra="forbid"``,
  so a misspelt key is an error that names it);
* ``build(settings: Settings) -> Source`` — the configured source.

The configuration layer validates a source block's ``type`` first, then the rest of the
block against that kind's ``Settings``, so error paths read
``sources.pg-main.database: field required``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from safehold.errors import ConfigError

KINDS: dict[str, str] = {
    "directory": "safehold.sources.directory",
    "command": "safehold.sources.command",
    "postgres": "safehold.sources.postgres",
    "mysql": "safehold.sources.mysql",
    "redis": "safehold.sources.redis",
    "sqlite": "safehold.sources.sqlite",
    "volume": "safehold.sources.volume",
}


def kind_module(kind: str) -> ModuleType:
    """The module implementing source kind ``kind``."""
    module = KINDS.get(kind)
    if module is None:
        raise ConfigError(
            f"unknown source type {kind!r}",
            hint=f"use one of: {', '.join(sorted(KINDS))}",
        )
    return importlib.import_module(module)
