"""The README's first command, `make demo`, is `tools/demo` once the packages and the venv are
there: it boots a UEFI and a BIOS VM through proxydhcp, says what happened stage by stage,
removes everything it made, and exits non-zero when a VM did not boot (or when stopped).
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e import firmware_lab as fl

REASON = fl.qemu_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

DEMO = os.path.join(fl.ROOT, "tools", "demo")


def _leftovers() -> dict:
    """What a demo could leave behind: namespaces of its segment, its QEMU and proxydhcp
    processes (by the demo MACs and the demo's working directory), its temp dirs. Other tests
    running at the same time on this machine make namespaces and daemons of their own."""
    netns = [line.split()[0] for line in
             subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines() if line.strip()]
    ours = {ns for ns in netns if f"{fl.SUBNET}." in subprocess.run(["ip", "-n", ns, "-4", "addr"], capture_output=True,
                                                                      text=True).stdout}
    procs = subprocess.run(["pgrep", "-f", "qemu-system-x86_64 .*mac=52:54:00:de:|proxydhcp-demo-"],
                           capture_output=True, text=True).stdout.split()
    return {"netns": ours, "procs": set(procs), "dirs": set(glob.glob("/tmp/proxydhcp-demo-*"))}


def _new(before: dict, after: dict) -> dict:
    return {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}


def _demo(timeout: float = 300, **env) -> tuple[subprocess.CompletedProcess, dict]:
    if fl.missing_tools():
        pytest.fail(f"missing {', '.join(fl.missing_tools())}: `make test` installs them")
    before = _leftovers()
    out = subprocess.run([DEMO], cwd=fl.ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "PYTHON": sys.executable, **env})
    return out, _new(before, _leftovers())


def test_demo_boots_both_vms_says_how_and_removes_its_lab():
    out, left = _demo()
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert text.count("RESULT: booted in") == 2, text
    for stage in ("EDK2 PXE DHCPDISCOVER", "proxydhcp DHCPACK from port 4011: no address, boot file 'ipxe.efi'",
                  "TFTP ipxe.efi from 10.77.0.2: 850528 bytes", "HTTP GET /boot.ipxe", "boot script ran",
                  "proxydhcp demo: 52:54:00:de:00:01 kept its corporate lease",
                  "proxydhcp demo: 52:54:00:de:00:02 kept its corporate lease",
                  "proxydhcp never offered an address and answered only PXE clients",
                  "demo: both VMs booted through proxydhcp; lab removed"):
        assert stage.lower() in text.lower(), f"{stage!r} not in the demo's account:\n{text}"
    assert not left, f"the demo left {left}"


def test_demo_exits_non_zero_when_a_vm_does_not_boot():
    # half a second is too short for any firmware: neither VM boots
    out, left = _demo(PROXYDHCP_E2E_BOOT_TIMEOUT="0.5")
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert text.count("RESULT: FAILED") == 2, text
    # (with no VM booted, proxydhcp had nobody to answer: "discipline" fails too)
    assert "demo: FAILED (uefi, bios" in text and "lab removed" in text, text
    assert not left, f"the demo left {left}"


def test_demo_stopped_midway_removes_what_it_made():
    if fl.missing_tools():
        pytest.fail(f"missing {', '.join(fl.missing_tools())}: `make test` installs them")
    before = _leftovers()
    demo = subprocess.Popen([DEMO], cwd=fl.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    try:
        lines = []
        for line in demo.stdout:     # stop it while the UEFI VM boots
            lines.append(line)
            if "booting (QEMU TCG" in line:
                break
        time.sleep(2)
        os.kill(demo.pid, signal.SIGTERM)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    text = "".join(lines) + rest
    assert demo.returncode == 130, text
    assert "demo: interrupted" in text, text
    fl.wait_for(lambda: not _new(before, _leftovers()), 10)
    left = _new(before, _leftovers())
    assert not left, f"the demo left {left}\n{text}"
