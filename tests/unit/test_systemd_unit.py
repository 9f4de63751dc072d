"""systemd/proxydhcp.service: verify passes and the offline security rating is at least OK."""

import os
import re
import shutil
import subprocess
import sys

import pytest

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "systemd", "proxydhcp.service")
pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")


def local_unit(tmp_path):
    """The unit with ExecStart pointing at this checkout's proxydhcp (verify checks it exists)."""
    text = open(UNIT).read()
    exe = os.path.join(os.path.dirname(sys.executable), "proxydhcp")
    text = text.replace("/opt/proxydhcp/.venv/bin/proxydhcp", exe)
    path = tmp_path / "proxydhcp.service"
    path.write_text(text)
    return str(path)


def test_verify(tmp_path):
    out = subprocess.run(["systemd-analyze", "verify", local_unit(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "proxydhcp.service" not in out.stderr, out.stderr


def test_security_rating_is_ok_or_better(tmp_path):
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", local_unit(tmp_path)],
                         capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out.stdout)
    assert m, out.stdout[-500:] + out.stderr
    print(f"systemd-analyze security: {m.group(1)} {m.group(2)}")
    assert m.group(2) in ("SAFE", "OK"), m.group(0)


def test_unit_keeps_only_the_capabilities_it_needs():
    text = open(UNIT).read()
    assert "User=proxydhcp" in text
    caps = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1).split()
    assert sorted(caps) == ["CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]
