"""User hooks: run the operator's commands and webhooks on boot events, off the reactor.

Owns the mapping of boot-session updates and lease events to the configured hooks
(`events.user_hooks`), the payload (JSON on stdin / POST body, PROXYDHCP_* environment
variables), the concurrency cap with its bounded queue, the timeouts and the
`proxydhcp_hook_runs_total{hook,result}` metric.

Nothing here can delay a DHCP reply: `dispatch()` (called on the hot path by the events
service) only builds a small dict and appends it to a queue; processes are spawned
(reactor.spawnProcess) and webhooks posted (twisted.web.client.Agent) from a later reactor
turn, and both are asynchronous. Beyond `max_concurrent` runs, work waits in the queue;
when the queue is full, it is dropped and counted.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from io import BytesIO
from typing import Callable

from proxydhcp import metrics
from proxydhcp.events.sessions import SESSION_FAILED, SESSION_SUCCEEDED, STAGE_REACHED
from proxydhcp.events.sessions import hook_payload as payload_from_update
from proxydhcp.reactors import UsesReactor

log = logging.getLogger(__name__)

# the events a hook can be mapped to ("on:"); the session ones and their payload are the
# tracker's (proxydhcp.events.sessions), which runs in the event store's writer process
LEASE = "lease"
EVENTS = (SESSION_SUCCEEDED, SESSION_FAILED, STAGE_REACHED, LEASE)
RESULTS = ("ok", "failed", "timeout", "dropped")

_KILL_GRACE = 2.0          # seconds between SIGTERM and SIGKILL on timeout
_STDERR_KEEP = 2000        # bytes of a failed command's stderr kept for the log
QUEUE_MAX = 1000


class Hook:
    """One configured hook (validated by proxydhcp.config)."""

    def __init__(self, d: dict) -> None:
        self.name: str = d["name"]
        on = d["on"]
        self.on: frozenset = frozenset([on] if isinstance(on, str) else on)
        self.command: list | None = list(d["command"]) if d.get("command") else None
        self.url: str | None = d.get("url")
        self.timeout: float = float(d.get("timeout") or 10.0)


def payload_from_lease(ev: dict) -> dict:
    d = {"event": LEASE, "time": ev.get("time") or time.time(), "mac": ev.get("mac")}
    for k in ("source", "action", "ip", "hostname", "lease_time", "expires"):
        if ev.get(k) is not None:
            d[k] = ev[k]
    return d


def environment(payload: dict, base: dict | None = None) -> dict:
    """The command's environment: ours (minus stale PROXYDHCP_*) plus one variable per field."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("PROXYDHCP_")}
    for k, v in payload.items():
        if v is None:
            continue
        if isinstance(v, (list, tuple)):
            v = " ".join(map(str, v))
        env["PROXYDHCP_" + k.upper()] = str(v)
    return env


class _Run:
    def __init__(self, hook: Hook, payload: dict) -> None:
        self.hook = hook
        self.payload = payload
        self.started = 0.0
        self.timed_out = False
        self.timer = None
        self.cancel: Callable[[], None] | None = None


def _process_protocol():
    from twisted.internet import protocol

    class CommandProtocol(protocol.ProcessProtocol):
        def __init__(self, data: bytes, done) -> None:
            self.data = data
            self.done = done
            self.stderr = b""

        def connectionMade(self) -> None:
            try:
                self.transport.write(self.data)
            finally:
                self.transport.closeStdin()

        def outReceived(self, data: bytes) -> None:   # stdout is discarded
            pass

        def errReceived(self, data: bytes) -> None:
            if len(self.stderr) < _STDERR_KEEP:
                self.stderr += data[:_STDERR_KEEP - len(self.stderr)]

        def processEnded(self, reason) -> None:
            value = reason.value
            self.done(getattr(value, "exitCode", None), getattr(value, "signal", None), self.stderr)

    return CommandProtocol


class UserHooks(UsesReactor):
    """The dispatcher. `hooks()` returns the current EventsConfig (read on each dispatch,
    so a config reload takes effect for the next event)."""

    def __init__(self, settings: Callable[[], object], reactor=None, queue_max: int = QUEUE_MAX,
                 agent=None) -> None:
        self.settings = settings
        self._reactor = reactor
        self.queue_max = queue_max
        self.queue: collections.deque = collections.deque()
        self.running: set = set()
        self._pump_call = None
        self._agent = agent
        self._stopped = False
        self.counts = collections.Counter()   # (hook, result) -> n, for tests and logs

    # --- hot path ----------------------------------------------------------------------
    def on_update(self, update) -> None:
        """A tracker Update: queue the matching hooks (the events service gets the payloads
        ready-made from the writer process's tracker and calls dispatch)."""
        try:
            hooks = self._hooks()
            p = payload_from_update(update) if hooks else None
            if p is not None:
                self.dispatch(p, hooks)
        except Exception:   # a hook's problem is never the DHCP reply's
            log.exception("user hooks: cannot dispatch %s", getattr(update, "kind", update))

    def on_event(self, ev: dict) -> None:
        """A bus event (hot path): lease events go to the hooks mapped to "lease"."""
        if ev.get("kind") != "lease":
            return
        try:
            hooks = self._hooks()
            if hooks:
                self.dispatch(payload_from_lease(ev), hooks)
        except Exception:
            log.exception("user hooks: cannot dispatch a lease event")

    def wanted(self) -> list[str]:
        """The session events some configured hook is mapped to (the writer builds payloads
        for these only)."""
        return sorted({e for h in self._hooks() for e in h.on} - {LEASE})

    def _hooks(self) -> list:
        cfg = self.settings()
        raw = getattr(cfg, "user_hooks", None) or []
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] is not raw:
            self._cache = cache = (raw, [Hook(d) for d in raw])
        return cache[1]

    def dispatch(self, payload: dict, hooks: list | None = None) -> int:
        """Queue the hooks mapped to payload["event"]; returns how many were queued."""
        if self._stopped:
            return 0
        hooks = self._hooks() if hooks is None else hooks
        n = 0
        for hook in hooks:
            if payload["event"] not in hook.on:
                continue
            if len(self.queue) >= self.queue_max:
                self._count(hook, "dropped")
                log.warning("user hook %s: queue full (%d waiting), %s event for %s dropped",
                            hook.name, len(self.queue), payload["event"], payload.get("mac"))
                continue
            self.queue.append(_Run(hook, payload))
            n += 1
        if n and self._pump_call is None:
            self._pump_call = self.reactor.callLater(0, self._pump)
        return n

    # --- off the hot path --------------------------------------------------------------
    @property
    def max_concurrent(self) -> int:
        return max(1, int(getattr(self.settings(), "user_hooks_max_concurrent", 4) or 4))

    def _pump(self) -> None:
        self._pump_call = None
        while self.queue and len(self.running) < self.max_concurrent and not self._stopped:
            run = self.queue.popleft()
            self.running.add(run)
            run.started = time.monotonic()
            try:
                if run.hook.command:
                    self._spawn(run)
                else:
                    self._post(run)
            except Exception as exc:
                self._finish(run, "failed", f"cannot start: {exc}")

    def _finish(self, run: _Run, result: str, detail: str = "") -> None:
        if run not in self.running:
            return
        self.running.discard(run)
        if run.timer is not None and run.timer.active():
            run.timer.cancel()
        run.timer = None
        self._count(run.hook, result)
        took = time.monotonic() - run.started
        what = f"user hook {run.hook.name} ({run.payload['event']} {run.payload.get('mac')})"
        if result == "ok":
            log.debug("%s: ok in %.2f s", what, took)
        else:
            log.warning("%s: %s after %.2f s%s", what, result, took, f": {detail}" if detail else "")
        if self.queue and self._pump_call is None and not self._stopped:
            self._pump_call = self.reactor.callLater(0, self._pump)

    def _count(self, hook: Hook, result: str) -> None:
        self.counts[(hook.name, result)] += 1
        metrics.HOOK_RUNS.labels(hook.name, result).inc()

    def _spawn(self, run: _Run) -> None:
        cmd = run.hook.command
        data = (json.dumps(run.payload, sort_keys=True) + "\n").encode()

        def done(code, sig, stderr):
            if run.timed_out:
                self._finish(run, "timeout", f"killed after {run.hook.timeout:g} s")
            elif code == 0:
                self._finish(run, "ok")
            else:
                why = f"exit status {code}" if code is not None else f"signal {sig}"
                err = stderr.decode("utf-8", "replace").strip()
                self._finish(run, "failed", why + (f"; stderr: {err}" if err else ""))

        proto = _process_protocol()(data, done)
        transport = self.reactor.spawnProcess(proto, cmd[0], list(cmd), env=environment(run.payload))

        def kill(sig="KILL"):
            try:
                transport.signalProcess(sig)
            except Exception:   # already gone
                pass

        def on_timeout():
            run.timed_out = True
            kill("TERM")
            run.timer = self.reactor.callLater(_KILL_GRACE, kill)

        run.cancel = kill
        run.timer = self.reactor.callLater(run.hook.timeout, on_timeout)

    def _get_agent(self):
        if self._agent is None:
            from twisted.web.client import Agent, HTTPConnectionPool
            self._agent = Agent(self.reactor, pool=HTTPConnectionPool(self.reactor, persistent=False))
        return self._agent

    def _post(self, run: _Run) -> None:
        from twisted.internet import defer
        from twisted.internet import protocol
        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers
        body = json.dumps(run.payload, sort_keys=True).encode()
        headers = Headers({b"Content-Type": [b"application/json"],
                           b"User-Agent": [b"proxydhcp-user-hook"],
                           b"X-Proxydhcp-Event": [run.payload["event"].encode()]})
        d = self._get_agent().request(b"POST", run.hook.url.encode(), headers,
                                      FileBodyProducer(BytesIO(body)))

        class Discard(protocol.Protocol):   # the answer's body is not wanted
            def __init__(self, done):
                self.done = done

            def connectionLost(self, reason=None):
                self.done.callback(None)

        def got(response):
            d2 = defer.Deferred()
            response.deliverBody(Discard(d2))
            d2.addCallback(lambda _: response.code)
            return d2

        def ok(code):
            if 200 <= code < 300:
                self._finish(run, "ok")
            else:
                self._finish(run, "failed", f"HTTP {code} from {run.hook.url}")

        def err(f):
            if run.timed_out:
                self._finish(run, "timeout", f"no answer from {run.hook.url} in {run.hook.timeout:g} s")
            else:
                self._finish(run, "failed", f"{run.hook.url}: {f.getErrorMessage()}")

        def on_timeout():
            run.timed_out = True
            d.cancel()

        d.addCallback(got)
        d.addCallbacks(ok, err)
        d.addErrback(lambda f: log.error("user hook %s: %s", run.hook.name, f.getTraceback()))
        run.cancel = lambda *_: d.cancel()
        if run in self.running:   # it may have failed at once
            run.timer = self.reactor.callLater(run.hook.timeout, on_timeout)

    def stop(self) -> None:
        """Drop the queue and end running hooks (at service stop)."""
        self._stopped = True
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        self.queue.clear()
        for run in list(self.running):
            if run.cancel is not None:
                run.cancel()

