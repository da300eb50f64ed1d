"""The YAML configuration: a repository, destinations, and named sources with their hooks.

Pure parsing and validation: :func:`load_config` reads and validates a file (every
problem reported with the key's path and line), :func:`choose_source` picks a source
block by name, and :mod:`~safehold.config.secrets` says which values are credentials.
Building a run from a source block (``safehold.app.source_job``) is the composition
root's work, running it is :mod:`safehold.runs`'. docs/configuration.md describes every key.
"""

from safehold.config.load import load_config, parse_config, validate_destination
from safehold.config.models import (
    Config,
    DestinationConfig,
    HookConfig,
    RepositoryConfig,
    SourceCommon,
    SourceConfig,
    choose_source,
)
from safehold.config.secrets import config_secrets, repository_secrets, source_secrets

__all__ = [
    "Config",
    "DestinationConfig",
    "HookConfig",
    "RepositoryConfig",
    "SourceCommon",
    "SourceConfig",
    "choose_source",
    "config_secrets",
    "load_config",
    "parse_config",
    "repository_secrets",
    "source_secrets",
    "validate_destination",
]
