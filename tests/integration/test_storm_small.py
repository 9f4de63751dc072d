"""The boot-storm generator of bench/storm.py, small, against proxydhcp in a namespace lab.

20 simulated UEFI machines, each with its own MAC, GUID and address, go the whole way as
firmware does (EDK2 DISCOVER on 67 from its own MAC, REQUEST on 4011, TFTP tsize probe and
lock-step transfer of the real ipxe.efi, iPXE's DISCOVER and 4011 REQUEST, HTTP fetch of the
boot script), and proxydhcp's session store, /api/sessions and /metrics count 20 succeeded
sessions, each joined to its machine's MAC and address. Correctness only: the figures come
from `bench/storm.py` runs, never from a test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.netlab import have_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IPXE_EFI = "/usr/lib/ipxe/ipxe.efi"
N = 20

pytestmark = pytest.mark.skipif(
    not have_root() or not os.path.exists(IPXE_EFI) or not shutil.which("curl"),
    reason="needs root, iproute2, curl and Debian's ipxe (make test installs them)")


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


storm = _load("storm_bench", os.path.join(ROOT, "bench", "storm.py"))
gen = _load("storm_gen", os.path.join(ROOT, "bench", "storm_gen.py"))


def test_twenty_machines_boot_through_proxydhcp_and_twenty_sessions_succeed():
    lab = storm.build_lab(N)
    try:
        setup = storm.start_proxydhcp(lab, N)
        result = storm.run_generator(lab, N, spread=2.0, arrival="random", workers=1, deadline=60.0)
        machines = result["machines"]
        assert [m["i"] for m in machines] == list(range(N))
        failed = [(m["i"], m["failed_stage"], m["error"]) for m in machines if not m["ok"]]
        assert failed == []
        for m in machines:                                # every stage was gone through
            assert set(storm.STAGES) <= set(m["lat"]), m
        blocks = os.path.getsize(os.path.realpath(IPXE_EFI)) // gen.BLKSIZE + 1
        assert result["counts"]["tftp_data"] == N * blocks   # each machine read the whole file once

        counts = storm.proxydhcp_sessions(lab, setup, N)
        assert counts["cli_succeeded"] == N, counts
        assert counts["api_succeeded"] == N, counts
        assert counts["metric_succeeded"] == N, counts

        out = subprocess.run([sys.executable, "-m", "proxydhcp", "sessions", "-c", setup["config"], "--json",
                              "--limit", str(2 * N)], capture_output=True, text=True, cwd=ROOT, check=True)
        rows = json.loads(out.stdout)
        by_mac = {r["mac"]: r for r in rows}
        for i in range(N):
            mac = gen.machine_mac(i).hex(":")
            assert by_mac[mac]["state"] == "succeeded"
            assert gen.machine_ip(i, storm.BASE) in by_mac[mac]["ips"]   # TFTP joined through its address
            assert by_mac[mac]["boot_file"] is None or by_mac[mac]["boot_file"].endswith("ipxe.efi")
            assert "firmware_transfer" in by_mac[mac]["stages"] and "boot_script" in by_mac[mac]["stages"]
        assert setup["procs"]["proxydhcp"].poll() is None
    finally:
        storm.close_lab(lab)
