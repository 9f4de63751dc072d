"""The DHCP-server hooks: argument/environment parsing, delivery, spool; the daemon's validation."""

import importlib.machinery
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from proxydhcp.events import hooks as intake

HOOKS = os.path.join(os.path.dirname(__file__), "..", "..", "hooks")


def load(name):
    path = os.path.join(HOOKS, name)
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


dnsmasq = load("dnsmasq-hook")
isc = load("isc-dhcpd-hook")
kea = load("kea-hook")
common = sys.modules["proxydhcp_hook"]


def test_mac_normalisation():
    n = common.norm_mac
    assert n("0:1b:2:c:d4:e") == "00:1b:02:0c:d4:0e"          # ISC binary-to-ascii
    assert n("1:0:1b:2:c:d4:e") == "00:1b:02:0c:d4:0e"        # with the hardware type
    assert n("AA-BB-CC-DD-EE-FF") == "aa:bb:cc:dd:ee:ff"
    for bad in ("", None, "aa:bb", "zz:bb:cc:dd:ee:ff", "100:1:2:3:4:5", "aa::cc:dd:ee:ff"):
        assert n(bad) is None


def test_dnsmasq_add_with_environment():
    env = {"DNSMASQ_INTERFACE": "eth0", "DNSMASQ_LEASE_EXPIRES": "1700003600", "DNSMASQ_TIME_REMAINING": "3600",
           "DNSMASQ_VENDOR_CLASS": "PXEClient:Arch:00007", "DNSMASQ_USER_CLASS0": "iPXE",
           "DNSMASQ_USER_CLASS1": "x", "DNSMASQ_CLIENT_ID": "01:aa", "DNSMASQ_RELAY_ADDRESS": "10.0.0.1"}
    (ev,) = dnsmasq.parse(["add", "AA:BB:CC:DD:EE:FF", "10.1.2.3", "host1"], env)
    assert ev["kind"] == "lease" and ev["source"] == "dnsmasq" and ev["action"] == "commit"
    assert ev["mac"] == "aa:bb:cc:dd:ee:ff" and ev["ip"] == "10.1.2.3" and ev["hostname"] == "host1"
    assert ev["lease_time"] == 3600 and ev["expires"] == 1700003600 and ev["iface"] == "eth0"
    assert ev["user_classes"] == ["iPXE", "x"] and ev["relay"] == "10.0.0.1" and len(ev["uid"]) == 24
    assert intake.validate(json.loads(json.dumps(ev)))["mac"] == "aa:bb:cc:dd:ee:ff"
    assert dnsmasq.parse(["old", "aa:bb:cc:dd:ee:ff", "10.1.2.3"], {})[0]["action"] == "renew"
    assert dnsmasq.parse(["del", "aa:bb:cc:dd:ee:ff", "10.1.2.3"], {})[0]["action"] == "release"


def test_dnsmasq_tftp_and_ignored_actions():
    (ev,) = dnsmasq.parse(["tftp", "1024", "10.1.2.3", "/srv/tftp/ipxe.efi"], {})
    assert ev["kind"] == "tftp.transfer" and ev["client_ip"] == "10.1.2.3" and ev["size"] == 1024
    assert intake.validate(ev)["outcome"] == "ok"
    for argv in (["init"], ["arp-add", "aa:bb:cc:dd:ee:ff", "10.1.2.3"], ["arp-del", "x", "y"],
                 ["relay-snoop", "x"], ["add", "00:01:00:01:aa", "fd00::5"]):
        assert dnsmasq.parse(argv, {}) == []
    for argv in ([], ["add", "aa:bb:cc:dd:ee:ff"], ["add", "nonsense", "10.1.2.3"], ["tftp", "1"]):
        with pytest.raises(common.Misuse):
            dnsmasq.parse(argv, {})


def test_isc_dhcpd_commit_release_expiry():
    (ev,) = isc.parse(["commit", "0:1b:2:c:d4:e", "10.1.2.3", "host1", "7200", "PXEClient:Arch:00000"], {})
    assert ev["mac"] == "00:1b:02:0c:d4:0e" and ev["lease_time"] == 7200 and ev["action"] == "commit"
    assert ev["vendor_class"].startswith("PXEClient") and ev["source"] == "isc-dhcpd"
    (ev,) = isc.parse(["expiry", "0:1b:2:c:d4:e", "10.1.2.3", ""], {})
    assert ev["action"] == "expire" and "hostname" not in ev
    assert isc.parse(["release", "0:1b:2:c:d4:e", "10.1.2.3"], {})[0]["action"] == "release"
    for argv in ([], ["commit", "x", "10.1.2.3"], ["commit", "0:1:2:3:4:5", "nope"], ["bogus", "0:1:2:3:4:5", "10.0.0.1"]):
        with pytest.raises(common.Misuse):
            isc.parse(argv, {})


def test_kea_hook_points():
    env = {"LEASES4_SIZE": "2", "QUERY4_TYPE": "DHCPREQUEST", "QUERY4_IFACE_NAME": "eth0",
           "QUERY4_GIADDR": "0.0.0.0"}
    for i, ip in enumerate(("10.0.0.5", "10.0.0.6")):
        env.update({f"LEASES4_AT{i}_ADDRESS": ip, f"LEASES4_AT{i}_HWADDR": "3a:f6:0c:d4:4e:26",
                    f"LEASES4_AT{i}_HOSTNAME": "kcli", f"LEASES4_AT{i}_VALID_LIFETIME": "600"})
    evs = kea.parse(["leases4_committed"], env)
    assert [e["ip"] for e in evs] == ["10.0.0.5", "10.0.0.6"]
    assert evs[0]["lease_time"] == 600 and evs[0]["action"] == "commit" and "relay" not in evs[0]
    assert kea.parse(["leases4_committed"], {"LEASES4_SIZE": "0"}) == []
    lease = {"LEASE4_ADDRESS": "10.0.0.5", "LEASE4_HWADDR": "3a:f6:0c:d4:4e:26", "LEASE4_HOSTNAME": ""}
    assert kea.parse(["lease4_renew"], dict(lease, QUERY4_TYPE="DHCPDISCOVER")) == []
    assert kea.parse(["lease4_renew"], dict(lease, QUERY4_TYPE="DHCPREQUEST"))[0]["action"] == "renew"
    for point, action in (("lease4_release", "release"), ("lease4_expire", "expire"),
                          ("lease4_decline", "decline"), ("lease4_recover", "recover")):
        (ev,) = kea.parse([point], lease)
        assert ev["action"] == action and intake.validate(ev)["ip"] == "10.0.0.5"
    assert kea.parse(["pkt4_receive"], {}) == [] and kea.parse(["lease6_renew"], {}) == []
    with pytest.raises(common.Misuse):
        kea.parse(["lease4_release"], {})


@pytest.mark.parametrize("patch,error", [
    ({"v": 2}, "version"), ({"uid": "x"}, "uid"), ({"source": "infoblox"}, "source"),
    ({"kind": "dhcp.reply"}, "kind"), ({"action": "steal"}, "action"), ({"mac": "AA:BB"}, "mac"),
    ({"ip": "300.1.1.1"}, "ip"), ({"lease_time": "600"}, "lease_time"), ({"time": -1}, "time"),
    ({"hostname": 5}, "hostname")])
def test_the_daemon_rejects_malformed_events(patch, error):
    ev = dict(v=1, uid="0123456789ab", kind="lease", time=1.0, source="kea", action="commit",
              mac="aa:bb:cc:dd:ee:ff", ip="10.0.0.1", lease_time=600)
    intake.validate(ev)
    with pytest.raises(intake.BadEvent, match=error):
        intake.validate(dict(ev, **patch))


class FakeDaemon(threading.Thread):
    """Answers each line with `answer` after `delay` seconds."""

    def __init__(self, path, answer=b"ok", delay=0.0, hold=None):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.answer, self.delay, self.lines = answer, delay, []
        self.hold = hold           # an Event: answer only once it is set (a hung daemon until then)
        self.answered = 0

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                for line in conn.makefile("rb"):
                    self.lines.append(json.loads(line))
                    time.sleep(self.delay)
                    if self.hold is not None:
                        self.hold.wait(30)
                    try:
                        conn.sendall(self.answer + b"\n")
                        self.answered += 1
                    except OSError:
                        break


def run_hook(name, args, tmp_path, env=None):
    e = {"PROXYDHCP_SOCKET": str(tmp_path / "hook.sock"), "PROXYDHCP_SPOOL": str(tmp_path / "spool"),
         "PATH": "/usr/bin:/bin"}
    e.update(env or {})
    t = time.perf_counter()
    p = subprocess.run([os.path.join(HOOKS, name), *args], env=e, capture_output=True, text=True, timeout=10)
    return p, time.perf_counter() - t


@pytest.fixture
def spool(tmp_path):
    (tmp_path / "spool").mkdir()
    return tmp_path / "spool"


def test_delivered_when_the_daemon_answers(tmp_path, spool):
    d = FakeDaemon(str(tmp_path / "hook.sock"))
    d.start()
    p, took = run_hook("dnsmasq-hook", ["add", "aa:bb:cc:dd:ee:ff", "10.0.0.9", "h"], tmp_path)
    assert p.returncode == 0 and p.stderr == "" and list(spool.iterdir()) == []
    assert d.lines[0]["mac"] == "aa:bb:cc:dd:ee:ff"


def test_spooled_when_the_daemon_is_down(tmp_path, spool):
    p, took = run_hook("isc-dhcpd-hook", ["commit", "0:1:2:3:4:5", "10.0.0.9"], tmp_path)
    assert p.returncode == 0 and "spooled 1 event" in p.stderr
    (f,) = spool.iterdir()
    assert json.loads(f.read_text())["mac"] == "00:01:02:03:04:05"


def test_spooled_when_the_daemon_hangs(tmp_path, spool):
    """A daemon that reads the event and never answers: the hook gives up on its own (the
    DHCP server does not wait for the daemon), spools the event, and exits 0 while the
    daemon still holds its answer back."""
    hung = threading.Event()
    d = FakeDaemon(str(tmp_path / "hook.sock"), hold=hung)
    d.start()
    try:
        p, took = run_hook("isc-dhcpd-hook", ["commit", "0:1:2:3:4:5", "10.0.0.9"], tmp_path)
        assert d.answered == 0 and len(d.lines) == 1        # returned before any answer came
        assert p.returncode == 0 and "no answer from" in p.stderr and "within 80 ms" in p.stderr
        (f,) = spool.iterdir()
        assert json.loads(f.read_text())["uid"] == d.lines[0]["uid"]   # the same event, kept once later
    finally:
        hung.set()


def test_retry_answer_spools_and_reject_does_not(tmp_path, spool):
    d = FakeDaemon(str(tmp_path / "hook.sock"), answer=b"retry disk full")
    d.start()
    p, _ = run_hook("kea-hook", ["lease4_release"], tmp_path,
                    {"LEASE4_ADDRESS": "10.0.0.5", "LEASE4_HWADDR": "3a:f6:0c:d4:4e:26"})
    assert p.returncode == 0 and "retry disk full" in p.stderr and len(list(spool.iterdir())) == 1
    d.sock.close()
    os.unlink(tmp_path / "hook.sock")
    for f in spool.iterdir():
        f.unlink()
    d = FakeDaemon(str(tmp_path / "hook.sock"), answer=b"reject source: one of dnsmasq, isc-dhcpd, kea")
    d.start()
    p, _ = run_hook("kea-hook", ["lease4_release"], tmp_path,
                    {"LEASE4_ADDRESS": "10.0.0.5", "LEASE4_HWADDR": "3a:f6:0c:d4:4e:26"})
    assert p.returncode == 0 and list(spool.iterdir()) == []      # never retried
    assert f"kea-hook: the daemon rejected event {d.lines[0]['uid']}: reject source: one of" in p.stderr


# --- the daemon's side: the socket's answers and the spool's intake ---------------------------
class FakeStore:
    """record_durable keeps the callback: the test decides when (and how) each commit ends."""

    def __init__(self):
        self.waiting = []

    def record_durable(self, ev, done):
        self.waiting.append((ev, done))


class NowReactor:
    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def listener(tmp_path):
    from proxydhcp.events import EventBus
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    store = FakeStore()
    (tmp_path / "spool").mkdir(exist_ok=True)
    lst = intake.HookListener(store, bus, NowReactor(), str(tmp_path / "hook.sock"), str(tmp_path / "spool"))
    return lst, store, seen


def lease_line(uid, **kw):
    ev = dict(dict(v=1, uid=uid, kind="lease", time=1.0, source="kea", action="commit",
                   mac="aa:bb:cc:dd:ee:ff", ip="10.0.0.1", lease_time=600), **kw)
    return json.dumps(ev).encode()


def test_the_socket_answers_in_order_and_ok_only_after_the_commit(tmp_path):
    from twisted.internet.testing import StringTransport
    from proxydhcp.events.store import DUPLICATE, FAILED, STORED
    lst, store, seen = listener(tmp_path)
    factory = type("F", (), {"listener": lst})()
    conn = intake.HookConnection()
    conn.factory = factory
    transport = StringTransport()
    conn.makeConnection(transport)
    conn.dataReceived(lease_line("uid-aaaaaaaa") + b"\n" + b"{not json\n" +
                      lease_line("uid-cccccccc", source="infoblox") + b"\n" + lease_line("uid-dddddddd") + b"\n" +
                      lease_line("uid-eeeeeeee") + b"\n" + lease_line("uid-ffffffff") + b"\n")
    assert transport.value() == b""            # the first event is not committed yet: nothing is said
    assert [ev["uid"] for ev, _ in store.waiting] == ["uid-aaaaaaaa", "uid-dddddddd", "uid-eeeeeeee", "uid-ffffffff"]
    (a, done_a), (d, done_d), (e, done_e), (f, done_f) = store.waiting
    done_d(STORED)
    assert transport.value() == b"" and [x["uid"] for x in seen] == ["uid-dddddddd"]
    done_a(STORED)
    lines = transport.value().decode().splitlines()
    assert lines[0] == "ok" and lines[1].startswith("reject ") and lines[2].startswith("reject source:") \
        and lines[3] == "ok" and len(lines) == 4
    done_e(DUPLICATE)                            # socket, then spool: acknowledged, not emitted twice
    done_f(FAILED)
    assert transport.value().decode().splitlines()[4:] == ["ok", "retry the store could not write the event"]
    assert [x["uid"] for x in seen] == ["uid-dddddddd", "uid-aaaaaaaa"]
    assert seen[1]["kind"] == "lease" and seen[1]["lease_time"] == 600 and lst.accepted == 2


def test_the_spool_is_taken_in_bad_files_are_set_aside_and_failures_kept(tmp_path):
    from proxydhcp.events.store import FAILED, STORED
    lst, store, seen = listener(tmp_path)
    spool = tmp_path / "spool"
    (spool / "1-good.json").write_bytes(lease_line("uid-11111111"))
    (spool / "2-again.json").write_bytes(lease_line("uid-22222222"))
    (spool / "3-bad.json").write_bytes(b"{truncated")
    (spool / ".4-half.json.tmp").write_bytes(b"{")     # a hook still writing it
    assert lst.intake_spool() == 2
    assert sorted(p.name for p in spool.iterdir()) == [".4-half.json.tmp", "1-good.json", "2-again.json",
                                                       "3-bad.json.rejected"]
    assert lst.intake_spool() == 0                       # in flight: not taken twice
    (good, done_good), (again, done_again) = store.waiting
    done_good(STORED)
    done_again(FAILED)                                   # not stored: the file stays for the next scan
    assert sorted(p.name for p in spool.iterdir()) == [".4-half.json.tmp", "2-again.json", "3-bad.json.rejected"]
    assert [x["uid"] for x in seen] == ["uid-11111111"]
    assert lst.intake_spool() == 1 and store.waiting[-1][0]["uid"] == "uid-22222222"


def test_misuse_is_reported_and_exits_zero(tmp_path, spool):
    p, _ = run_hook("isc-dhcpd-hook", ["comit", "x"], tmp_path)
    assert p.returncode == 0 and "isc-dhcpd-hook: needs ACTION MAC IP" in p.stderr and "usage:" in p.stderr
    p, _ = run_hook("dnsmasq-hook", ["arp-add", "aa:bb:cc:dd:ee:ff", "10.0.0.1"], tmp_path)
    assert p.returncode == 0 and p.stderr == ""
    p, _ = run_hook("kea-hook", ["--help"], tmp_path)
    assert p.returncode == 0 and "usage" not in p.stderr and "kea-hook HOOK_POINT" in p.stdout


def test_an_unwritable_spool_loses_loudly_but_exits_zero(tmp_path):
    p, _ = run_hook("dnsmasq-hook", ["add", "aa:bb:cc:dd:ee:ff", "10.0.0.9"], tmp_path,
                    {"PROXYDHCP_SPOOL": str(tmp_path / "missing")})
    assert p.returncode == 0 and "1 event(s) lost" in p.stderr


def test_stop_reports_a_socket_it_may_no_longer_remove(caplog):
    """After a privilege drop the state dir may refuse the unlink Twisted does on close: one
    warning line, not an unhandled error in the Deferred."""
    from twisted.internet import defer

    class Port:
        def stopListening(self):
            return defer.fail(PermissionError(13, "Permission denied"))

    listener = intake.HookListener(None, None, None, "/state/hook.sock", "/state/spool")
    listener.port = Port()
    with caplog.at_level("WARNING"):
        d = listener.stop()
    results = []
    d.addBoth(results.append)
    assert results == [None]     # the failure was handled
    assert listener.port is None
    assert "could not remove the hook socket /state/hook.sock" in caplog.text
    assert "Permission denied" in caplog.text
