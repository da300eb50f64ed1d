"""The YAML configuration: a repository, destinations, and named sources with their hooks.

:func:`load_config` reads and validates a file (every problem reported with the key's
path and line); :func:`source_job` turns one source block into what
:mod:`safehold.engine.source_run` runs. docs/configuration.md describes every key.
"""

from safehold.config.jobs import choose_source, repository_secrets, source_job
from safehold.config.load import load_config, parse_config
from safehold.config.models import (
    Config,
    DestinationConfig,
    HookConfig,
    RepositoryConfig,
    SourceCommon,
    SourceConfig,
)

__all__ = [
    "Config",
    "DestinationConfig",
    "HookConfig",
    "RepositoryConfig",
    "SourceCommon",
    "SourceConfig",
    "choose_source",
    "load_config",
    "parse_config",
    "repository_secrets",
    "source_job",
]
