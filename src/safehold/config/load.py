"""Reading a configuration file: YAML, ``${VAR}`` interpolation, aliases, validation.

Every problem is reported with the path of the key the user wrote and, when the YAML
parser saw it, the line: ``safehold.yaml:12: sources.pg-main.database: field required``.
All problems of a file are reported at once, so fixing a file takes one round.

``${VAR}`` in a value is replaced by the environment variable ``VAR`` (an error if it is
not set), ``${VAR:-default}`` falls back to ``default``, and ``$${`` writes a literal
``${``. Interpolation happens in values only, after parsing, so a secret's characters
never need YAML quoting.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from safehold.config.alerts import AlertsConfig
from safehold.config.aliases import apply_aliases
from safehold.config.models import (
    COMMON_KEYS,
    RESERVED_SOURCE_KEYS,
    RESERVED_TOP_KEYS,
    Config,
    DestinationConfig,
    RepositoryConfig,
    SourceCommon,
    SourceConfig,
)
from safehold.config.plans import ServiceConfig
from safehold.config.reports import ReportsConfig
from safehold.errors import ConfigError
from safehold.sources.registry import KINDS

__all__ = ["load_config", "parse_config", "validate_destination"]

Path_ = tuple[str | int, ...]
TOP_KEYS = (
    "version",
    "repository",
    "destinations",
    "sources",
    "service",
    "alerts",
    "reports",
    *RESERVED_TOP_KEYS,
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_MAX_SHOWN = 20


class _Problems:
    """Collected validation problems, each a (path, message)."""

    def __init__(self, file: str, lines: dict[Path_, int]) -> None:
        self.file = file
        self.lines = lines
        self.items: list[tuple[Path_, str]] = []

    def add(self, path: Path_, message: str) -> None:
        self.items.append((path, message))

    def add_validation(self, prefix: Path_, exc: ValidationError) -> None:
        for err in exc.errors(include_input=False, include_url=False):
            loc = prefix + tuple(err["loc"])
            self.add(loc, _message(err))

    def line(self, path: Path_) -> int | None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = []
        for path, msg in self.items[:_MAX_SHOWN]:
            where = self.file
            line = self.line(path)
            if line is not None:
                where += f":{line}"
            dotted = ".".join(str(p) for p in path) or "(top level)"
            shown.append(f"{where}: {dotted}: {msg}")
        if len(self.items) > _MAX_SHOWN:
            shown.append(f"... and {len(self.items) - _MAX_SHOWN} more")
        head = (
            "configuration is not valid"
            if len(shown) == 1
            else (f"configuration has {len(self.items)} problems")
        )
        raise ConfigError(
            head + ":\n  " + "\n  ".join(shown),
            hint="see docs/configuration.md for every key",
        )


def _message(err: Mapping[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown key"
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return msg[:1].lower() + msg[1:]


def _lines(node: yaml.Node, path: Path_, out: dict[Path_, int], problems: _Problems) -> None:
    """Line numbers of every key and item; duplicate keys (YAML keeps the last) are errors."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            if key in seen:
                out[(*path, key)] = key_node.start_mark.line + 1
                problems.add((*path, key), "duplicate key (only one may be given)")
            seen.add(key)
            out[(*path, key)] = key_node.start_mark.line + 1
            _lines(value_node, (*path, key), out, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out, problems)


def _interpolate(value: Any, path: Path_, problems: _Problems, env: Mapping[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, str(k)), problems, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), problems, env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.add(path, f"environment variable {name} is not set (used as ${{{name}}})")
        return ""

    return _VAR.sub(sub, value)


def load_config(path: str, *, env: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate the configuration file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the configuration file {path}: {exc.strerror}",
            hint="check the path given to --config",
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the configuration file {path} is not UTF-8 text") from exc
    return parse_config(text, path=path, env=env)


def parse_config(
    text: str, *, path: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate configuration ``text``; ``path`` names it in messages and anchors
    relative script paths."""
    env = os.environ if env is None else env
    lines: dict[Path_, int] = {}
    problems = _Problems(path, lines)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if node is not None:
        _lines(node, (), lines, problems)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.add((), "the file must be a mapping (sources:, repository:, ...)")
        problems.raise_if_any()
    data = _interpolate(data, (), problems, env)
    # A name in angle brackets (``<config>``, ``<plan P/NAME>``) is no file: relative
    # script paths have no folder to be relative to.
    base_dir = None if path.startswith("<") else os.path.dirname(os.path.abspath(path))
    context = {"base_dir": base_dir}

    warnings: list[str] = []
    reserved: dict[str, Any] = {}
    for key in data:
        if key not in TOP_KEYS:
            problems.add((str(key),), f"unknown key (allowed: {', '.join(TOP_KEYS)})")
        elif key in RESERVED_TOP_KEYS:
            reserved[key] = data[key]
            warnings.append(f"{key}: reserved for 'safehold serve'; this version ignores it")
    if data.get("version", 1) != 1:
        problems.add(("version",), "unsupported version (this safehold reads version 1)")

    repository = _validate(
        TypeAdapter(RepositoryConfig | None),
        data.get("repository"),
        ("repository",),
        problems,
        context,
    )
    destinations = _validate(
        TypeAdapter(list[DestinationConfig]),
        data.get("destinations") or [],
        ("destinations",),
        problems,
        context,
    )
    sources = _sources(data.get("sources"), problems, context, warnings, lines)
    service = _validate(
        TypeAdapter(ServiceConfig | None), data.get("service"), ("service",), problems, context
    )
    alerts = _validate(
        TypeAdapter(AlertsConfig | None), data.get("alerts"), ("alerts",), problems, context
    )
    reports = _validate(
        TypeAdapter(ReportsConfig | None), data.get("reports"), ("reports",), problems, context
    )
    problems.raise_if_any()
    return Config(
        path=path,
        repository=repository,
        destinations=destinations or [],
        sources=sources,
        warnings=warnings,
        reserved=reserved,
        service=service or ServiceConfig(),
        alerts=alerts,
        reports=reports,
    )


def validate_destination(data: Any, *, where: str) -> DestinationConfig:
    """A destination block (as one item of the file's ``destinations:``) validated as the
    file's are; every problem named by its key, after ``where`` (what the block is).

    Values are taken as given: no ``${VAR}`` interpolation (a destination given to the
    service carries its credentials themselves).
    """
    problems = _Problems(where, {})
    if not isinstance(data, dict):
        problems.add((), "must be a mapping (location:, password:, options:, ...)")
        problems.raise_if_any()
    found = _validate(TypeAdapter(DestinationConfig), data, (), problems, {"base_dir": None})
    problems.raise_if_any()
    assert isinstance(found, DestinationConfig)
    return found


def _validate(
    adapter: TypeAdapter[Any], value: Any, path: Path_, problems: _Problems, context: Any
) -> Any:
    try:
        return adapter.validate_python(value, context=context)
    except ValidationError as exc:
        problems.add_validation(path, exc)
        return None


def _sources(
    raw: Any,
    problems: _Problems,
    context: dict[str, Any],
    warnings: list[str],
    lines: dict[Path_, int],
) -> dict[str, SourceConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(("sources",), "must be a mapping of source name to its settings")
        return {}
    out: dict[str, SourceConfig] = {}
    for name, block in raw.items():
        path: Path_ = ("sources", str(name))
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.add(
                path,
                "a source name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit",
            )
            continue
        if not isinstance(block, dict):
            problems.add(path, "must be a mapping with at least 'type:'")
            continue
        before = len(problems.items)
        found = _source(name, apply_aliases(block, path, problems.add), path, problems, context)
        if found is not None and len(problems.items) == before:
            for key in RESERVED_SOURCE_KEYS:
                if getattr(found.common, key) is not None:
                    warnings.append(
                        f"sources.{name}.{key}: reserved for 'safehold serve'; "
                        "this version ignores it"
                    )
            out[name] = SourceConfig(
                name=name,
                kind=found.kind,
                common=found.common,
                settings=found.settings,
                line=lines.get(path),
            )
    return out


def _source(
    name: str, block: dict[str, Any], path: Path_, problems: _Problems, context: Any
) -> SourceConfig | None:
    kind = block.get("type")
    if kind is None:
        problems.add((*path, "type"), f"field required (one of: {', '.join(KINDS)})")
        return None
    if kind not in KINDS:
        problems.add((*path, "type"), f"unknown source type {kind!r} (one of: {', '.join(KINDS)})")
        return None
    common_raw = {k: v for k, v in block.items() if k in COMMON_KEYS}
    kind_raw = {k: v for k, v in block.items() if k not in COMMON_KEYS}
    common = _validate(TypeAdapter(SourceCommon), common_raw, path, problems, context)
    if common is not None:
        _check_users(common, path, problems)
    try:
        from safehold.sources.registry import kind_module

        settings_model: type[BaseModel] = kind_module(kind).Settings
    except ImportError:
        problems.add((*path, "type"), f"source type {kind!r} is not available in this build")
        return None
    settings = _validate(TypeAdapter(settings_model), kind_raw, path, problems, context)
    if common is None or settings is None:
        return None
    return SourceConfig(name=name, kind=kind, common=common, settings=settings)


def _check_users(common: SourceCommon, path: Path_, problems: _Problems) -> None:
    wanted: list[tuple[Path_, str]] = []
    if common.backup_user:
        wanted.append(((*path, "backup_user"), common.backup_user))
    for phase, hook in common.hooks.by_phase().items():
        if hook.user:
            wanted.append(((*path, "hooks", phase, "user"), hook.user))
    for where, user in wanted:
        try:
            pwd.getpwnam(user)
        except KeyError:
            problems.add(where, f"no user {user!r} on this machine")
