"""The ProxyDHCP issue's example config, as written (contrib/examples/minimal.yaml), boots real
firmware: a UEFI VM (EDK2's PXE client fetches ipxe.efi over proxydhcp's TFTP; Debian's
/usr/lib/ipxe/ipxe.efi is a link to /boot/ipxe.efi, which a configured boot file may be) and a
BIOS VM (QEMU's iPXE ROM) both run the `hello` profile's script, which greets them by MAC and
opens the iPXE shell.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.e2e import firmware_lab as fl

REASON = fl.qemu_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

MINIMAL = os.path.join(fl.ROOT, "contrib", "examples", "minimal.yaml")
UEFI_MAC = "52:54:00:e2:00:31"
BIOS_MAC = "52:54:00:e2:00:32"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    missing = fl.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: `make test` installs them (tools/debian-deps test)")
    with open(MINIMAL) as fh:
        example = fh.read()
    with fl.FirmwareLab(str(tmp_path_factory.mktemp("fw-minimal")), config_yaml=example) as lab:
        yield lab


@pytest.mark.parametrize("kind,mac", [("uefi", UEFI_MAC), ("bios", BIOS_MAC)])
def test_the_issue_example_boots_real_firmware(lab, record_property, kind, mac):
    hello = re.compile(rf"Hello {re.escape(mac)} from proxydhcp")
    boot = lab.boot(kind, mac, label=f"minimal-example/{kind}", until=hello, ends_itself=False)
    record_property(f"boot_seconds_minimal_{kind}", boot.marker_after)
    cap = lab.capture()
    problems = fl.check_boot(boot, cap, corp=lab.corp_ip) + fl.check_proxy_discipline(cap, corp=lab.corp_ip)
    assert not problems, "\n".join(problems) + "\n\nserial:\n" + fl._plain(boot.serial)[-2500:]
