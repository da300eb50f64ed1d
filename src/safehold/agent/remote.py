"""The agent that works for a service: ``safehold agent --server URL --token-file F``.

It runs on a service's VM, next to the data, and talks to ``safehold serve`` over its API
with a token of role ``agent`` only (no database credentials, no inbound port):

- it **registers** its name (the first registration binds the name to its token) and
  **heart-beats** every few seconds; the answer names the runs cancelled meanwhile, which
  it stops as Ctrl-C would;
- up to ``concurrency`` **pollers** long-poll ``GET /api/v1/agent/jobs/next`` for the jobs
  of the plans bound to it (``agent: NAME`` in the service's file). Each job runs as a
  child process with the agent's own configuration file, which names the same sources
  with their hooks and the destinations' credentials (they stay on this machine): a
  backup, its plan's retention, or a restore. A plan made through the API (``agent:`` in
  its block) comes with its configuration document instead; its credentials travel beside
  it, over the API, into the child's environment only (never onto this machine's disk);
- the child's log lines go to the service every half second; its end (exit code, run
  record) is sent until the service takes it (a restart of the service is waited out);
- **cut off**: when the heartbeats have failed for :data:`FENCE_SECONDS`, the agent stops
  its running children before the service could take them for lost and run them
  elsewhere or again (the same lease as a worker's); their runs end as "agent lost" and
  are retried once the agent is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from safehold import __version__
from safehold.errors import ConfigError, SafeholdError, UsageError
from safehold.runs.child import (
    KILL_GRACE,
    LogLine,
    backup_argv,
    drill_argv,
    forget_argv,
    restore_argv,
    retention_argv,
    run_child,
    stop_child,
)

__all__ = [
    "FENCE_SECONDS",
    "RemoteAgent",
    "RemoteOptions",
    "check_server",
    "read_token",
    "serve_remote",
]

log = logging.getLogger("safehold.agent")

FENCE_SECONDS = 15.0  # heartbeats failing this long: stop the running children
POLL_WAIT = 25.0  # seconds a long poll asks the service to wait
RETRY_MAX = 10.0  # seconds between two tries at most, while the service is away
END_PATIENCE = 600.0  # seconds a run's end is offered to a service that does not answer
_FLUSH_EVERY = 0.5


def read_token(path: str) -> str:
    """The token in ``path`` (its first line), with a clear error if it is missing."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(
            f"cannot read the token file {path}: {exc.strerror}",
            hint="write the token from 'safehold token create --role agent' into it (mode 0600)",
        ) from None
    if not text:
        raise UsageError(f"the token file {path} is empty")
    return text.splitlines()[0].strip()


@dataclass
class RemoteOptions:
    """How the agent was asked to run."""

    server: str
    token: str = field(repr=False)
    name: str
    config_path: str
    state_dir: Path
    concurrency: int = 2
    stop_grace: float = 10.0
    ca_file: str | None = None  # the service's CA, for a certificate of its own


class _Refused(SafeholdError):
    """The service refused the agent for good (a wrong token, a name taken)."""


class RemoteAgent:
    """One agent process: registration, heartbeats, pollers and the children they run."""

    def __init__(self, options: RemoteOptions) -> None:
        self.options = options
        verify: bool | str = options.ca_file or True
        self.client = httpx.AsyncClient(
            base_url=options.server.rstrip("/"),
            headers={"Authorization": f"Bearer {options.token}"},
            timeout=httpx.Timeout(30.0, read=POLL_WAIT + 30.0),
            verify=verify,
        )
        self.heartbeat_every = 5.0
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self.fenced: set[str] = set()
        self.stopping: set[asyncio.Future[None]] = set()
        self.last_beat = time.monotonic()

    # --- the service's answers ------------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call; a refusal that waiting cannot cure raises :class:`_Refused`."""
        response = await self.client.request(method, path, **kwargs)
        if response.status_code in (401, 403, 409, 422):
            raise _Refused(f"the service refused {method} {path}: {_error_of(response)}")
        return response

    async def register(self) -> None:
        """Register, trying again while the service cannot be reached."""
        wait = 0.5
        while True:
            try:
                response = await self._call(
                    "POST",
                    "/api/v1/agent/register",
                    json={"name": self.options.name, "host": socket.gethostname(),
                          "version": __version__},
                )  # fmt: skip
                if response.status_code == 200:
                    self.heartbeat_every = float(response.json()["heartbeat_every"])
                    self.last_beat = time.monotonic()
                    log.info("registered as agent %s with %s", self.options.name,
                             self.options.server)  # fmt: skip
                    return
                log.warning("registration answered %d; trying again", response.status_code)
            except httpx.TransportError as exc:
                log.warning("the service cannot be reached (%s); trying again in %.0f s",
                            type(exc).__name__, wait)  # fmt: skip
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)

    # --- heartbeats and the fence ---------------------------------------------------------

    async def heartbeats(self, stop: asyncio.Event) -> None:
        """Heart-beat until ``stop``; stop cancelled runs; fence when cut off."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.heartbeat_every)
            if stop.is_set():
                return
            try:
                response = await self._call("POST", "/api/v1/agent/heartbeat")
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 404:
                # Silent so long that the service forgot this agent: its runs were ended
                # as lost already. Stop them, and register again.
                self._fence("the service no longer knows this agent")
                await self.register()
                continue
            if response is not None and response.status_code == 200:
                self.last_beat = time.monotonic()
                for run_id in response.json().get("abort", []):
                    proc = self.children.get(run_id)
                    if proc is not None:
                        log.info("run %s was cancelled; stopping it", run_id)
                        self._stop_later(proc)
                continue
            if time.monotonic() - self.last_beat > FENCE_SECONDS:
                self._fence(f"no heartbeat has reached the service for {FENCE_SECONDS:.0f} s")

    def _fence(self, why: str) -> None:
        running = [r for r in self.children if r not in self.fenced]
        if not running:
            return
        log.error("%s: stopping %d running job(s), which the service runs again", why,
                  len(running))  # fmt: skip
        for run_id in running:
            self.fenced.add(run_id)
            self._stop_later(self.children[run_id])

    def _stop_later(self, proc: asyncio.subprocess.Process) -> None:
        stopping = asyncio.ensure_future(stop_child(proc))
        self.stopping.add(stopping)  # kept until done: a task without a reference may go
        stopping.add_done_callback(self.stopping.discard)

    # --- jobs -------------------------------------------------------------------------------

    async def poller(self, stop: asyncio.Event) -> None:
        """Take jobs one at a time until ``stop``."""
        wait = 0.5
        while not stop.is_set():
            try:
                response = await self._call(
                    "GET", "/api/v1/agent/jobs/next", params={"wait": POLL_WAIT}
                )
            except httpx.TransportError:
                response = None
            if response is None or response.status_code >= 500 or response.status_code == 404:
                if response is not None and response.status_code == 404:
                    await self.register()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                wait = min(wait * 2, RETRY_MAX)
                continue
            wait = 0.5
            if response.status_code == 204:
                continue
            await self.run_job(response.json())

    def argv(self, job: dict[str, Any], config: str | None = None) -> list[str]:
        """The child's command line for ``job``, with this machine's configuration file
        (or ``config``: the one a plan made through the API came with)."""
        config = config or self.options.config_path
        source, kind = job["source"], job["kind"]
        if kind == "retention":
            snapshots = (job.get("params") or {}).get("snapshots")
            if snapshots:  # restore points deleted through the service
                return forget_argv(config, list(snapshots), held=job.get("held") or [])
            return retention_argv(config, source, held=job.get("held") or [])
        if kind == "restore":
            params = job.get("params") or {}
            return restore_argv(
                config, source, snapshot=str(params["snapshot"]), target=params.get("target"),
                replace=bool(params.get("replace")), paths=list(params.get("paths") or ()),
            )  # fmt: skip
        if kind == "drill":  # the service chose the snapshot (None: the drill's own choice)
            snapshot = (job.get("params") or {}).get("snapshot")
            return drill_argv(
                config, source, run_id=job["run_id"], snapshot=snapshot,
                state_dir=self.options.state_dir,
            )  # fmt: skip
        if kind != "backup":
            raise UsageError(f"this agent cannot run a {kind} job")
        return backup_argv(
            config, source, run_id=job["run_id"], plan=job["plan"],
            state_dir=self.options.state_dir / "runs",
        )  # fmt: skip

    async def run_job(self, job: dict[str, Any]) -> None:
        """Run one job's child, relaying its lines, then report its end."""
        run_id = str(job["run_id"])
        log.info("run %s: %s of %s (attempt %s)", run_id, job["kind"], job["plan"],
                 job["attempt"])  # fmt: skip
        with self._job_config(job) as config:
            await self._run_job(job, run_id, config)

    @contextlib.contextmanager
    def _job_config(self, job: dict[str, Any]) -> Iterator[str | None]:
        """The configuration a plan made through the API came with, in a private file
        for the child's time (it names its credentials only as ${SAFEHOLD_SECRET_N});
        None for a plan of this machine's own file."""
        document = job.get("config")
        if document is None:
            yield None
            return
        folder = self.options.state_dir / "jobs"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="plan-", suffix=".yaml", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(document)
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _run_job(self, job: dict[str, Any], run_id: str, config: str | None) -> None:
        pending: list[LogLine] = []
        flusher = asyncio.create_task(self._flush_loop(run_id, pending))
        try:
            argv = self.argv(job, config)
        except SafeholdError as exc:
            flusher.cancel()
            await self._end(run_id, {"exit_code": 2, "stderr_tail": [exc.message]})
            return
        timeout = job.get("timeout")
        limit = None
        if timeout:
            limit = float(timeout) + (KILL_GRACE if job["kind"] in ("backup", "restore") else 0)
        try:
            result = await run_child(
                argv,
                on_line=pending.append,
                limit=limit,
                env=job.get("env") or None,  # an API plan's credentials: environment only
                on_start=lambda proc: self.children.__setitem__(run_id, proc),
            )
        finally:
            self.children.pop(run_id, None)
            flusher.cancel()
            await self._flush(run_id, pending)
        if run_id in self.fenced:
            self.fenced.discard(run_id)
            return  # the service ends it as lost and runs it again
        await self._end(
            run_id,
            {"exit_code": result.exit_code, "record": result.record, "killed": result.killed,
             "stderr_tail": result.stderr_tail[-40:]},
        )  # fmt: skip

    async def _flush_loop(self, run_id: str, pending: list[LogLine]) -> None:
        while True:
            await asyncio.sleep(_FLUSH_EVERY)
            await self._flush(run_id, pending)

    async def _flush(self, run_id: str, pending: list[LogLine]) -> None:
        lines, pending[:] = list(pending[:1000]), pending[1000:]
        if not lines:
            return
        body = {
            "lines": [
                {"level": line.level if line.level in _LEVELS else "info",
                 "message": _message(line)}
                for line in lines
            ]
        }  # fmt: skip
        try:
            response = await self._call("POST", f"/api/v1/agent/runs/{run_id}/lines", json=body)
        except (httpx.TransportError, _Refused):
            response = None
        if response is None or response.status_code >= 500:
            pending[:0] = lines  # kept for the next try

    async def _end(self, run_id: str, body: dict[str, Any]) -> None:
        """Offer the run's end until the service takes it (or :data:`END_PATIENCE`)."""
        deadline = time.monotonic() + END_PATIENCE
        wait = 0.5
        while True:
            try:
                response = await self._call("POST", f"/api/v1/agent/runs/{run_id}/end", json=body)
                if response.status_code < 500:
                    ended = response.json() if response.status_code == 200 else {}
                    log.info("run %s ended: %s", run_id, ended.get("state", response.status_code))
                    return
            except httpx.TransportError:
                pass
            except _Refused as exc:
                log.error("run %s: the service refused its end: %s", run_id, exc.message)
                return
            if time.monotonic() + wait > deadline:
                log.error("run %s: the service took no end for %.0f s; giving up (it will "
                          "be ended as lost and run again)", run_id, END_PATIENCE)  # fmt: skip
                return
            await asyncio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)

    # --- the whole --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Register, then heart-beat and take jobs until ``stop``; then let the running
        children end (or stop them after the grace) and tell the service."""
        try:
            await self.register()
            beats = asyncio.create_task(self.heartbeats(stop), name="heartbeats")
            pollers = [
                asyncio.create_task(self.poller(stop), name=f"poller-{i}")
                for i in range(self.options.concurrency)
            ]
            await stop.wait()
            await self._stop_children()
            for task in pollers:
                task.cancel()
            await asyncio.gather(*pollers, return_exceptions=True)
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
            with contextlib.suppress(httpx.HTTPError, _Refused):
                await self._call("POST", "/api/v1/agent/stop")
        finally:
            await self.client.aclose()

    async def _stop_children(self) -> None:
        if not self.children:
            return
        log.info("stopping: %d running job(s) have %.0f s to end", len(self.children),
                 self.options.stop_grace)  # fmt: skip
        await asyncio.gather(
            *(stop_child(proc, self.options.stop_grace) for proc in list(self.children.values())),
            return_exceptions=True,
        )


_LEVELS = ("debug", "info", "warning", "error")


def _message(line: LogLine) -> str:
    if not line.fields:
        return line.message.replace("\x00", "")
    import json

    extra = json.dumps(line.fields, default=str, separators=(",", ":"))
    return f"{line.message} {extra}".replace("\x00", "")[:65536]


def _error_of(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        hint = f" (hint: {error['hint']})" if error.get("hint") else ""
        return f"{error['message']}{hint}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def check_server(url: str) -> str:
    """``url`` if it is an http(s) URL, else a :class:`ConfigError`."""
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"--server {url!r} is not an http:// or https:// URL",
            hint="e.g. https://backup.example.com:8808",
        )
    return url


async def serve_remote(options: RemoteOptions) -> int:
    """Run the agent until SIGTERM or SIGINT; the exit code."""
    import signal

    agent = RemoteAgent(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await agent.run(stop)
    except _Refused as exc:
        print(f"safehold: error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
