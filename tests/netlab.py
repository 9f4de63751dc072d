"""Test network lab: namespaces, a bridge and veth links that a test makes and removes.

Nothing is created in the root namespace except the namespaces themselves; every name
carries a per-lab random prefix so parallel or leftover labs never collide. Processes
started through a Lab are killed by PID when it closes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time


def have_root() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


class Lab:
    """A segment: namespace <p>br holds bridge br0; each host namespace gets a veth into it."""

    def __init__(self, subnet: str = "10.77.0") -> None:
        self.prefix = "pd" + secrets.token_hex(3)
        self.subnet = subnet
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix=self.prefix + "-")
        self.bridge_ns = self._netns("br")
        self.sh(self.bridge_ns, "ip link add br0 type bridge")
        self.sh(self.bridge_ns, "ip link set br0 up")
        self.sh(self.bridge_ns, "ip link set lo up")

    def _netns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        return name

    def sh(self, ns: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", ns, "sh", "-c", command, check=check)

    def host(self, role: str, address: str | None, mtu: int = 1500, mac: str | None = None) -> str:
        """A namespace with interface eth0 on the bridge; address like '10.77.0.2/24' or None;
        mac fixes eth0's hardware address (otherwise random per lab)."""
        ns = self._netns(role)
        peer = f"{self.prefix}{role}"[:15]
        run("ip", "link", "add", "eth0", "netns", ns, "mtu", str(mtu), *(("address", mac) if mac else ()),
            "type", "veth", "peer", "name", peer, "netns", self.bridge_ns, "mtu", str(mtu))
        self.sh(self.bridge_ns, f"ip link set {peer} master br0 && ip link set {peer} up")
        self.sh(ns, "ip link set lo up && ip link set eth0 up")
        if address:
            self.sh(ns, f"ip addr add {address} dev eth0")
        return ns

    def spawn(self, ns: str, *argv: str, **kw) -> subprocess.Popen:
        """Start a process in a namespace; it is killed by PID when the lab closes.
        Its output goes to a file (proc.log_path) unless stdout/stderr are given: an unread
        pipe fills up and blocks a chatty server (dnsmasq logs to stderr)."""
        log_path = None
        if "stdout" not in kw and "stderr" not in kw:
            log_path = os.path.join(self.tmp, f"{os.path.basename(argv[0])}-{len(self.procs)}.log")
            kw["stdout"] = open(log_path, "wb")
            kw["stderr"] = subprocess.STDOUT
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        proc.log_path = log_path
        self.procs.append(proc)
        return proc

    @staticmethod
    def output(proc: subprocess.Popen) -> str:
        if getattr(proc, "log_path", None):
            with open(proc.log_path, errors="replace") as fh:
                return fh.read()
        return ""

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
