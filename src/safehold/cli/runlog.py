"""Where a source run's log events go: text lines, or one JSON object per line, on stderr.

``--log-format json`` gives lines a log shipper can parse::

    {"ts": "2026-11-22T03:00:00.123Z", "level": "info", "event": "hook.finished",
     "run_id": "…", "backup_guid": "…", "source": "pg-main", "identifier": "…", ...}

The events were masked for secrets by the engine (:class:`~safehold.runs.events.Redactor`).
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

from safehold.runs.events import LogEvent, LogSink

__all__ = ["make_sink"]

# Output is shown as indented lines (a failed hook's), or is in the error's message already
# (a failed tool's last lines; error_output keeps its last 8 KiB for the JSON log).
_TEXT_SKIP = {"run_id", "backup_guid", "source", "identifier", "stdout", "stderr", "error_output"}


def _ts(event: LogEvent) -> str:
    return event.ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{event.ts.microsecond // 1000:03d}Z"


def make_sink(fmt: str, *, quiet: bool = False, stream: TextIO | None = None) -> LogSink:
    """A sink writing ``fmt`` ("text" or "json") lines; ``quiet`` keeps warnings and errors."""

    def out() -> TextIO:
        return stream if stream is not None else sys.stderr

    def json_sink(event: LogEvent) -> None:
        if quiet and event.level in ("debug", "info"):
            return
        line = {"ts": _ts(event), "level": event.level, "event": event.event, **event.fields}
        out().write(json.dumps(line, default=str) + "\n")
        out().flush()

    def text_sink(event: LogEvent) -> None:
        if quiet and event.level in ("debug", "info"):
            return
        f = event.fields
        who = f"{f.get('source', '')} {str(f.get('run_id', ''))[:8]}"
        if f.get("identifier"):
            who += f" [{f['identifier']}]"
        rest = " ".join(
            f"{k}={v}" for k, v in f.items() if k not in _TEXT_SKIP and v not in (None, "", [])
        )
        out().write(f"{_ts(event)} {event.level.upper():7} {who}: {event.event} {rest}".rstrip())
        out().write("\n")
        if event.level == "error" and event.event == "hook.finished":
            tail = (str(f.get("stderr") or f.get("stdout") or "")).strip().splitlines()[-5:]
            for line in tail:
                out().write(f"    | {line}\n")
        out().flush()

    return json_sink if fmt == "json" else text_sink
