"""An api profile whose API hangs never stalls a DHCP reply (issue: HTTP boot service and
boot policy, "a slow or failing API never stalls a DHCP reply").

The whole daemon runs in a namespace; its api profile asks a stand-in API on the daemon's
own loopback that accepts the request and never answers. While a machine's script request
waits on that API, scripted PXE clients of each kind get their ProxyDHCP replies on 67 and
4011. Shown by order, not by timing: the replies arrive while the script request is still
open and the API still holds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import dpkt
import pytest

from tests.netlab import Lab, have_root, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
PROXY = "10.77.0.2"
API_PORT = 9000

pytestmark = pytest.mark.skipif(not have_root() or not shutil.which("curl"),
                                reason="needs root, iproute2 and curl (make test installs them)")

# accepts, notes each request line in a file, never answers
HANGING_API = f"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {API_PORT})); s.listen(16)
held = []
while True:
    c, _ = s.accept(); held.append(c)
    line = c.recv(4096).split(b"\\r\\n")[0].decode()
    with open(sys.argv[1], "a") as fh:
        fh.write(line + "\\n")
"""

CONFIG = f"""
dhcp: {{interfaces: [eth0]}}
tftp: {{enabled: false}}
http: {{port: 8080}}
state: {{dir: %s}}
profiles:
  cmdb: {{api: {{url: "http://127.0.0.1:{API_PORT}/v1/boot/{{{{ mac }}}}", timeout: 30}}}}
  local: {{exit: true}}
groups:
  - {{name: everyone, profile: cmdb}}
"""


def boot_files(lab: Lab, ns: str, kind: str, *args: str) -> list[str]:
    """The boot file of each reply from proxydhcp to a scripted client (read with dpkt)."""
    out = lab.sh(ns, " ".join([f"cd {ROOT} &&", PY, "-m", "tests.pxe_client", kind, "--wait", "1.5", *args]))
    replies = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return [dpkt.dhcp.DHCP(bytes.fromhex(r["hex"])).file.rstrip(b"\0").decode() for r in replies if r["src"] == PROXY]


def test_dhcp_replies_while_the_api_holds_a_script_request():
    workdir = tempfile.mkdtemp(prefix="proxydhcp-api-")
    os.chmod(workdir, 0o755)
    hits = os.path.join(workdir, "api-hits")
    try:
        with Lab() as lab:
            pxe = lab.host("pxe", f"{PROXY}/24")
            client = lab.host("client", "10.77.0.131/24")
            lab.sh(pxe, "ip link set lo up")
            api = lab.spawn(pxe, PY, "-c", HANGING_API, hits)
            cfg = os.path.join(workdir, "proxydhcp.yaml")
            with open(cfg, "w") as fh:
                fh.write(CONFIG % os.path.join(workdir, "state"))
            log = os.path.join(workdir, "proxydhcp.log")
            with open(log, "w") as out:
                daemon = lab.spawn(pxe, PY, "-m", "proxydhcp", "serve", "-c", cfg, "--no-drop",
                                   stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            assert wait_for(lambda: " running (config:" in open(log).read() or daemon.poll() is not None, 20) \
                and daemon.poll() is None, open(log).read()

            # a machine's script request: the daemon asks the API, which holds it
            script = lab.spawn(client, "curl", "-s", "-m", "60", "-o", os.path.join(workdir, "script"),
                               f"http://{PROXY}:8080/boot.ipxe?mac=52:54:00:aa:00:01&arch=0")
            assert wait_for(lambda: os.path.exists(hits) and "/v1/boot/52:54:00:aa:00:01" in open(hits).read(), 20), \
                open(log).read()

            # meanwhile every kind of PXE client gets its reply
            ipxe = boot_files(lab, client, "ipxe", "--mac", "52:54:00:aa:00:02")
            assert ipxe and "/boot.ipxe?mac=52:54:00:aa:00:02" in ipxe[0], ipxe
            assert boot_files(lab, client, "legacy-bios", "--mac", "52:54:00:aa:00:03") == ["undionly.kpxe"]
            assert boot_files(lab, client, "edk2", "--mac", "52:54:00:aa:00:04", "--message", "request",
                              "--to", PROXY, "--port", "4011", "--ciaddr", "10.77.0.131") == ["ipxe.efi"]

            # ... while the script request is still open and the API still holds it
            assert script.poll() is None, "the script request ended before the DHCP replies were checked"
            assert open(hits).read().count("GET ") == 1
            lab.stop(script)
            lab.stop(daemon)
            lab.stop(api)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
