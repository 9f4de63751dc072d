"""User hooks: matching boot events to hooks, the payload, the cap/queue/drop, timeouts.

The dispatcher runs on Twisted's real reactor here (twisted.trial's TestCase, run by
pytest); webhooks are posted to listeners on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import sys
import time
import types

import pytest
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from proxydhcp import config, metrics
from proxydhcp.events import sessions as S
from proxydhcp.events import userhooks as U

MAC = "52:54:00:12:34:56"
SH = "/bin/sh"
PY = sys.executable


def settings(hooks, max_concurrent=4):
    return types.SimpleNamespace(user_hooks=hooks, user_hooks_max_concurrent=max_concurrent)


def session(**kw):
    s = S.Session(id="s1", mac=MAC, started=100.0, updated=108.0, arch=7, firmware="legacy-pxe",
                  boot_file="ipxe.efi", ips=["10.77.0.50"], **kw)
    s.stages = {S.PXE_DISCOVER: 100.0, S.PROXY_OFFER: 100.1, S.FIRMWARE_TRANSFER: 105.0}
    return s


def failed_update():
    s = session(state=S.FAILED, closed=True, finished=230.0,
                diagnosis=S.Diagnosis(S.IPXE_NEVER_ASKED, "ipxe.efi transferred, iPXE never asked",
                                      "check Secure Boot"))
    return S.Update("failed", s)


def metric(hook, result):
    v = metrics.REGISTRY.get_sample_value("proxydhcp_hook_runs_total", {"hook": hook, "result": result})
    return v or 0.0


async def until(cond, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


# --- pure parts -----------------------------------------------------------------------------
def test_update_kinds_map_to_hook_events():
    s = session()
    assert U.payload_from_update(S.Update("opened", s)) is None
    assert U.payload_from_update(S.Update("updated", s)) is None
    assert U.payload_from_update(S.Update("closed", s)) is None
    p = U.payload_from_update(S.Update("stage", s, S.PROXY_OFFER))
    assert p["event"] == "stage_reached" and p["stage"] == S.PROXY_OFFER and p["mac"] == MAC
    p = U.payload_from_update(S.Update("succeeded", s, S.BOOT_SCRIPT))
    assert p["event"] == "session_succeeded" and "diagnosis" not in p
    p = U.payload_from_update(failed_update())
    assert p["event"] == "session_failed" and p["diagnosis"] == S.IPXE_NEVER_ASKED
    assert p["stage"] == p["last_stage"] == S.FIRMWARE_TRANSFER
    assert p["advice"] == "check Secure Boot" and p["arch"] == "x64-uefi" and p["session"] == "s1"
    assert p["duration"] == 130.0


def test_environment_has_the_event_fields_and_drops_stale_proxydhcp_vars():
    p = U.payload_from_update(failed_update())
    env = U.environment(p, {"PATH": "/usr/bin", "PROXYDHCP_SOCKET": "/x", "PROXYDHCP_MAC": "stale"})
    assert env["PATH"] == "/usr/bin" and "PROXYDHCP_SOCKET" not in env
    assert env["PROXYDHCP_EVENT"] == "session_failed"
    assert env["PROXYDHCP_MAC"] == MAC
    assert env["PROXYDHCP_STAGE"] == S.FIRMWARE_TRANSFER
    assert env["PROXYDHCP_DIAGNOSIS"] == S.IPXE_NEVER_ASKED
    assert env["PROXYDHCP_IPS"] == "10.77.0.50" and env["PROXYDHCP_SESSION"] == "s1"
    assert "PROXYDHCP_IP" not in env   # None values are left out
    lease = U.payload_from_lease({"kind": "lease", "time": 5.0, "mac": MAC, "source": "kea",
                                  "action": "commit", "ip": "10.0.0.9", "hostname": "h1"})
    env = U.environment(lease, {})
    assert env == {"PROXYDHCP_EVENT": "lease", "PROXYDHCP_TIME": "5.0", "PROXYDHCP_MAC": MAC,
                   "PROXYDHCP_SOURCE": "kea", "PROXYDHCP_ACTION": "commit", "PROXYDHCP_IP": "10.0.0.9",
                   "PROXYDHCP_HOSTNAME": "h1"}


def test_dispatch_only_queues_the_hooks_mapped_to_the_event():
    clock = task.Clock()
    hooks = [{"name": "fail", "on": ["session_failed"], "command": ["/bin/true"]},
             {"name": "any", "on": ["session_failed", "session_succeeded", "lease"], "url": "http://127.0.0.1:9/"},
             {"name": "stage", "on": "stage_reached", "command": ["/bin/true"]}]
    uh = U.UserHooks(lambda: settings(hooks), clock)
    uh.on_update(failed_update())
    assert [r.hook.name for r in uh.queue] == ["fail", "any"]
    assert not uh.running                       # nothing starts on the hot path
    assert len(clock.getDelayedCalls()) == 1    # one later reactor turn
    uh.queue.clear()
    uh.on_update(S.Update("stage", session(), S.PROXY_OFFER))
    uh.on_update(S.Update("updated", session()))
    uh.on_event({"kind": "dhcp.reply", "mac": MAC})
    uh.on_event({"kind": "lease", "mac": MAC, "action": "add"})
    assert [(r.hook.name, r.payload["event"]) for r in uh.queue] == [("stage", "stage_reached"), ("any", "lease")]


def test_no_hooks_configured_is_free():
    uh = U.UserHooks(lambda: settings([]), task.Clock())
    uh.on_update(failed_update())
    uh.on_event({"kind": "lease", "mac": MAC})
    assert not uh.queue


def test_a_full_queue_drops_and_counts():
    clock = task.Clock()
    hooks = [{"name": "q-drop", "on": ["session_failed"], "command": ["/bin/true"]}]
    uh = U.UserHooks(lambda: settings(hooks), clock, queue_max=3)
    before = metric("q-drop", "dropped")
    for _ in range(5):
        uh.on_update(failed_update())
    assert len(uh.queue) == 3
    assert uh.counts[("q-drop", "dropped")] == 2
    assert metric("q-drop", "dropped") == before + 2


def test_a_dispatch_bug_never_raises_into_the_hot_path():
    uh = U.UserHooks(lambda: settings([{"name": "x"}]), task.Clock())   # would be refused by config
    uh.on_update(failed_update())
    uh.on_event({"kind": "lease", "mac": MAC})


def test_hook_runs_metric_is_defined():
    assert "proxydhcp_hook_runs_total" in metrics.names()


# --- config ----------------------------------------------------------------------------------
def _load(tmp_path, events):
    import yaml
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"events": events}))
    return config.load(str(p))


def test_config_accepts_hooks(tmp_path):
    cfg = _load(tmp_path, {"user_hooks": [
        {"name": "notify", "on": ["session_failed"], "command": ["/usr/bin/logger", "boot failed"]},
        {"name": "cmdb", "on": "lease", "url": "https://cmdb.example/hook", "timeout": 2.5}],
        "user_hooks_max_concurrent": 2})
    assert [h["name"] for h in cfg.events.user_hooks] == ["notify", "cmdb"]
    assert cfg.events.user_hooks_max_concurrent == 2
    assert config.load(None).events.user_hooks == []


@pytest.mark.parametrize("hooks, words", [
    ("nope", "events.user_hooks: expected list"),
    (["x"], "events.user_hooks[0]: expected a mapping"),
    ([{"name": "a", "on": ["lease"], "command": ["/bin/true"], "bogus": 1}], "unknown key(s) bogus"),
    ([{"on": ["lease"], "command": ["/bin/true"]}], "events.user_hooks[0].name"),
    ([{"name": "a b", "on": ["lease"], "command": ["/bin/true"]}], ".name: expected a short name"),
    ([{"name": "a", "on": ["lease"], "command": ["/bin/true"]},
      {"name": "a", "on": ["lease"], "command": ["/bin/true"]}], "events.user_hooks[1].name: 'a' is used"),
    ([{"name": "a", "on": ["booted"], "command": ["/bin/true"]}], "(a).on: a list of session_succeeded"),
    ([{"name": "a", "on": [], "command": ["/bin/true"]}], "(a).on"),
    ([{"name": "a", "on": ["lease"]}], "(a): exactly one of command"),
    ([{"name": "a", "on": ["lease"], "command": ["/bin/true"], "url": "http://x/"}], "exactly one of"),
    ([{"name": "a", "on": ["lease"], "command": "/bin/true"}], "(a).command: a list"),
    ([{"name": "a", "on": ["lease"], "command": ["true"]}], "(a).command: the program must be an absolute"),
    ([{"name": "a", "on": ["lease"], "url": "ftp://x/"}], "(a).url: an http://"),
    ([{"name": "a", "on": ["lease"], "url": "http://x/", "timeout": 0}], "(a).timeout"),
    ([{"name": "a", "on": ["lease"], "url": "http://x/", "timeout": "5"}], "(a).timeout"),
])
def test_config_refuses_bad_hooks_naming_the_key(tmp_path, hooks, words):
    with pytest.raises(config.ConfigError) as e:
        _load(tmp_path, {"user_hooks": hooks})
    assert words in str(e.value)


def test_config_refuses_a_zero_cap(tmp_path):
    with pytest.raises(config.ConfigError, match="events.user_hooks_max_concurrent: at least 1"):
        _load(tmp_path, {"user_hooks_max_concurrent": 0})


# --- on the real reactor --------------------------------------------------------------------
class _Silent(protocol.Protocol):
    """Accepts a webhook and never answers."""


class _Answer(protocol.Protocol):
    def __init__(self, status):
        self.status = status
        self.buf = b""

    def dataReceived(self, data):
        self.buf += data
        head, sep, body = self.buf.partition(b"\r\n\r\n")
        if sep:
            n = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                     if ln.lower().startswith(b"content-length")][0])
            if len(body) >= n:
                self.factory.requests.append((head, body))
                self.transport.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                                     % self.status)
                self.transport.loseConnection()


class ReactorTests(unittest.TestCase):
    timeout = 30

    def mktemp(self):
        """A fresh path under a temporary directory (trial's own writes into the cwd)."""
        if not hasattr(self, "_tmp"):
            self._tmp = tempfile.mkdtemp(prefix="proxydhcp-userhooks-")
            self.addCleanup(shutil.rmtree, self._tmp, True)
        self._n = getattr(self, "_n", 0) + 1
        return os.path.join(self._tmp, f"t{self._n}")

    def make(self, hooks, max_concurrent=4, **kw):
        uh = U.UserHooks(lambda: settings(hooks, max_concurrent), reactor, **kw)
        self.addCleanup(uh.stop)
        return uh

    def listen(self, proto_factory):
        f = protocol.Factory()
        f.requests = []
        f.protocol = proto_factory
        port = reactor.listenTCP(0, f, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f, port.getHost().port

    async def test_command_gets_json_on_stdin_and_the_environment(self):
        out = self.mktemp()
        script = f'cat > {out}.json; env | grep ^PROXYDHCP_ | sort > {out}.env'
        uh = self.make([{"name": "u-cmd", "on": ["session_failed"], "command": [SH, "-c", script]}])
        before = metric("u-cmd", "ok")
        uh.on_update(failed_update())
        await until(lambda: uh.counts[("u-cmd", "ok")] == 1, what="the command")
        data = json.load(open(out + ".json"))
        assert data["event"] == "session_failed" and data["mac"] == MAC
        assert data["diagnosis"] == S.IPXE_NEVER_ASKED and data["advice"] == "check Secure Boot"
        env = dict(line.split("=", 1) for line in open(out + ".env").read().splitlines())
        assert env["PROXYDHCP_EVENT"] == "session_failed" and env["PROXYDHCP_MAC"] == MAC
        assert env["PROXYDHCP_STAGE"] == S.FIRMWARE_TRANSFER
        assert env["PROXYDHCP_DIAGNOSIS"] == S.IPXE_NEVER_ASKED
        assert metric("u-cmd", "ok") == before + 1

    async def test_failing_command_is_logged_and_counted(self):
        uh = self.make([{"name": "u-fail", "on": ["session_failed"],
                         "command": [SH, "-c", "echo broken >&2; exit 3"]},
                        {"name": "u-missing", "on": ["session_failed"], "command": ["/nonexistent/hook"]}])
        before = metric("u-fail", "failed")
        with self.assertLogs("proxydhcp.events.userhooks", "WARNING") as logs:
            uh.on_update(failed_update())
            await until(lambda: uh.counts[("u-fail", "failed")] == 1
                        and uh.counts[("u-missing", "failed")] == 1, what="the failures")
        text = "\n".join(logs.output)
        assert "exit status 3" in text and "stderr: broken" in text
        assert metric("u-fail", "failed") == before + 1

    async def test_timeout_kills_the_process(self):
        pidfile = self.mktemp()
        uh = self.make([{"name": "u-slow", "on": ["session_failed"], "timeout": 0.3,
                         "command": [SH, "-c", f"echo $$ > {pidfile}; exec sleep 30"]}])
        t0 = time.monotonic()
        uh.on_update(failed_update())
        await until(lambda: uh.counts[("u-slow", "timeout")] == 1, what="the timeout")
        assert time.monotonic() - t0 < 5
        pid = int(open(pidfile).read())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert metric("u-slow", "timeout") >= 1

    async def test_timeout_kills_a_process_that_ignores_sigterm(self):
        uh = self.make([{"name": "u-stubborn", "on": ["session_failed"], "timeout": 0.2,
                         "command": [PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                     "signal.SIG_IGN); print('x', flush=True); time.sleep(30)"]}])
        self.patch(U, "_KILL_GRACE", 0.3)
        uh.on_update(failed_update())
        await until(lambda: uh.counts[("u-stubborn", "timeout")] == 1, what="SIGKILL")
        assert not uh.running

    async def test_concurrency_cap_queues_then_runs_everything(self):
        marks = self.mktemp()
        os.mkdir(marks)
        # each run records how many runs are in progress while it runs
        script = (f'touch {marks}/$$; ls {marks} | wc -l >> {marks}.seen; sleep 0.3; rm {marks}/$$')
        uh = self.make([{"name": "u-cap", "on": ["session_failed"], "command": [SH, "-c", script]}],
                       max_concurrent=2, queue_max=4)
        peak = []
        real_pump = uh._pump

        def pump():
            real_pump()
            peak.append(len(uh.running))
        uh._pump = pump
        for _ in range(6):
            uh.on_update(failed_update())
        assert len(uh.queue) == 4 and uh.counts[("u-cap", "dropped")] == 2
        await until(lambda: uh.counts[("u-cap", "ok")] == 4, what="all queued runs")
        assert max(peak) == 2
        assert max(int(x) for x in open(marks + ".seen").read().split()) <= 2
        assert not uh.queue and not uh.running

    async def test_webhook_posts_the_event_as_json(self):
        f, port = self.listen(lambda: _Answer(204))
        uh = self.make([{"name": "u-web", "on": ["lease"], "url": f"http://127.0.0.1:{port}/hook"}])
        uh.on_event({"kind": "lease", "time": 1.0, "mac": MAC, "source": "dnsmasq", "action": "add",
                     "ip": "10.0.0.9"})
        await until(lambda: uh.counts[("u-web", "ok")] == 1, what="the webhook")
        head, body = f.requests[0]
        assert head.startswith(b"POST /hook HTTP/1.1")
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body) == {"event": "lease", "time": 1.0, "mac": MAC, "source": "dnsmasq",
                                    "action": "add", "ip": "10.0.0.9"}

    async def test_webhook_errors_and_timeouts(self):
        _, bad = self.listen(lambda: _Answer(500))
        _, silent = self.listen(_Silent)
        closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        refused = closed.getHost().port
        await closed.stopListening()
        uh = self.make([
            {"name": "u-500", "on": ["session_failed"], "url": f"http://127.0.0.1:{bad}/"},
            {"name": "u-refused", "on": ["session_failed"], "url": f"http://127.0.0.1:{refused}/"},
            {"name": "u-silent", "on": ["session_failed"], "url": f"http://127.0.0.1:{silent}/", "timeout": 0.3},
        ])
        uh.on_update(failed_update())
        await until(lambda: uh.counts[("u-500", "failed")] == 1 and uh.counts[("u-refused", "failed")] == 1
                    and uh.counts[("u-silent", "timeout")] == 1, what="three results")
        assert not uh.running

    async def test_dispatch_returns_before_anything_runs(self):
        out = self.mktemp()
        uh = self.make([{"name": "u-hot", "on": ["session_failed"], "command": [SH, "-c", f"touch {out}"]}])
        t0 = time.perf_counter()
        for _ in range(50):
            uh.on_update(failed_update())
        took = time.perf_counter() - t0
        assert not uh.running and not os.path.exists(out)
        assert took < 0.05      # 50 dispatches: only dict building and queueing
        await until(lambda: uh.counts[("u-hot", "ok")] == 50, what="the runs")

    async def test_stop_ends_running_hooks_and_drops_the_queue(self):
        uh = self.make([{"name": "u-stop", "on": ["session_failed"], "timeout": 60,
                         "command": [SH, "-c", "exec sleep 30"]}], max_concurrent=1)
        uh.on_update(failed_update())
        uh.on_update(failed_update())
        await until(lambda: len(uh.running) == 1, what="the first run")
        uh.stop()
        assert not uh.queue
        await until(lambda: not uh.running, what="the kill")
        assert uh.counts[("u-stop", "ok")] == 0
        await defer.succeed(None)
