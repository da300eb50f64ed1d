"""Cloud Foundry service-backup's key names, mapped onto safehold's.

service-backup users can move a manifest's ``service-backup:`` properties into a source
block unchanged:

==============================  ==========================================================
service-backup                  safehold
==============================  ==========================================================
``source_folder: DIR``          ``type: directory`` with ``paths: [DIR]``
``source_executable: CMD``      the ``backup`` hook: runs before the source is read
``cleanup_executable: CMD``     the ``backup-cleanup`` hook (a failure is logged only)
``service_identifier_executable``  ``identifier_command``: its output tags every log line
``cron_schedule``               ``schedule`` (``safehold serve``, ``safehold agent``)
``exit_if_in_progress``         the same name
``backup_user``                 the same name
==============================  ==========================================================

service-backup splits its commands on spaces; safehold splits them like a shell, which
gives the same words for every command service-backup could run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ALIASES", "apply_aliases"]

Path_ = tuple[str | int, ...]

# alias -> (where it goes, as a path inside the source block)
ALIASES: dict[str, tuple[str, ...]] = {
    "source_executable": ("hooks", "backup"),
    "cleanup_executable": ("hooks", "backup-cleanup"),
    "service_identifier_executable": ("identifier_command",),
    "cron_schedule": ("schedule",),
}


def apply_aliases(
    block: dict[str, Any], path: Path_, problem: Callable[[Path_, str], None]
) -> dict[str, Any]:
    """``block`` with service-backup keys rewritten; conflicts are reported to ``problem``."""
    out = dict(block)
    if "source_folder" in out:
        folder = out.pop("source_folder")
        kind = out.setdefault("type", "directory")
        if kind != "directory":
            problem(
                (*path, "source_folder"),
                f"only a directory source takes source_folder (this one has type: {kind})",
            )
        elif "paths" in out:
            problem((*path, "source_folder"), "give source_folder or paths, not both")
        else:
            out["paths"] = [folder]
    for alias, target in ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if len(target) == 1:
            if target[0] in out:
                problem((*path, alias), f"give {alias} or {target[0]}, not both")
            else:
                out[target[0]] = value
            continue
        hooks = out.get("hooks")
        if hooks is None:
            hooks = out["hooks"] = {}
        elif isinstance(hooks, dict):
            hooks = out["hooks"] = dict(hooks)
        else:
            continue  # a malformed hooks block is reported by validation
        if target[1] in hooks:
            problem((*path, alias), f"give {alias} or hooks.{target[1]}, not both")
        else:
            hooks[target[1]] = value
    return out
