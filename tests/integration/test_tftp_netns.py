"""TFTP over a veth link between two namespaces: blksize is capped at the interface MTU
minus 32 (the request's interface, found with IP_PKTINFO), and a real client fetches
through it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from proxydhcp.tftp import packet as pk
from tests.netlab import Lab, have_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not have_root(), reason="needs root and iproute2 for network namespaces")

PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(bytes.fromhex(sys.argv[1]), ("10.77.0.2", 69))
print(s.recvfrom(2000)[0].hex())
"""


def test_blksize_capped_at_mtu_and_curl_over_veth(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    data = os.urandom(200_000)
    (root / "f.bin").write_bytes(data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"tftp: {{root: {root}, port: 69}}\n")
    with Lab() as lab:
        srv_ns = lab.host("srv", "10.77.0.2/24", mtu=1400)
        cli_ns = lab.host("cli", "10.77.0.3/24", mtu=1400)
        log = open(tmp_path / "tftp.log", "w")
        proc = lab.spawn(srv_ns, sys.executable, "-m", "proxydhcp.tftp", "-c", str(cfg), cwd=ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=log)
        line = proc.stdout.readline()
        assert "TFTP listening" in line, (tmp_path / "tftp.log").read_text()
        rrq = pk.encode_rrq("f.bin", "octet", {"blksize": "9000", "tsize": "0"})
        out = lab.sh(cli_ns, f"cd {ROOT} && {sys.executable} -c '{PROBE}' {rrq.hex()}")
        assert pk.decode(bytes.fromhex(out.stdout.strip())) == \
            pk.OptionAck({"blksize": "1368", "tsize": str(len(data))})
        if shutil.which("curl"):
            lab.sh(cli_ns, f"curl -sS --fail --tftp-blksize 9000 -o {tmp_path}/out tftp://10.77.0.2/f.bin")
            assert (tmp_path / "out").read_bytes() == data
