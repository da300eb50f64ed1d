"""The settings of a local location: a folder path, and no options."""

from __future__ import annotations

from collections.abc import Mapping

from safehold.errors import ConfigError

__all__ = ["parse_location"]


def parse_location(rest: str, options: Mapping[str, object] | None) -> str:
    """The folder of ``local:rest``; a local location takes no options."""
    if options:
        raise ConfigError(
            f"unknown option(s) for a local location: {', '.join(sorted(options))}",
            hint="a local location takes no options",
        )
    if not rest:
        raise ConfigError("the location 'local:' needs a path", hint="write local:/path/to/repo")
    return rest
