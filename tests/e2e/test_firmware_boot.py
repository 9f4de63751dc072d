"""Real firmware boots through proxydhcp: QEMU (TCG) with OVMF and SeaBIOS in namespaces.

A corporate dnsmasq hands out plain leases; proxydhcp (its own ProxyDHCP, TFTP and HTTP)
runs beside it. Each boot is checked from a capture of the segment and the VM's serial log:
the UEFI client (EDK2's own PXE) fetched ipxe.efi from proxydhcp's TFTP, both clients reached
proxydhcp's boot script, which printed a marker with ${ip}, that address is the corporate
lease, and proxydhcp never offered an address nor answered a non-PXE client. Then the UEFI VM
boots behind ISC dhcrelay on another subnet, and with dnsmasq in proxydhcp's own namespace.

These tests skip only when QEMU cannot run at all (no qemu-system-x86_64, not root);
anything else missing is a failure, since `make test` installs it.
"""

from __future__ import annotations


import pytest

from tests.e2e import firmware_lab as fl

REASON = fl.qemu_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

UEFI_MAC = "52:54:00:e2:00:01"
BIOS_MAC = "52:54:00:e2:00:02"
IPXE_EFI_MAC = "52:54:00:e2:00:03"
UEFI_UUID = "6e65746c-6162-4000-8000-0000000000e1"


def _lab(tmp_path_factory, name: str, **kw) -> fl.FirmwareLab:
    missing = fl.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: `make test` installs them (tools/debian-deps test)")
    return fl.FirmwareLab(str(tmp_path_factory.mktemp(name)), config_yaml=fl.TEST_CONFIG, **kw)


def _report(lab: fl.FirmwareLab, boot: fl.Boot, cap: fl.Capture, problems: list[str]) -> str:
    tail = "\n".join(fl._read(lab.proxy_log).splitlines()[-25:])
    return ("\n".join(problems) + f"\n\nwhat happened ({boot.label}, {boot.kind}, {boot.mac}):\n"
            + "\n".join(fl.stages(boot, cap, )) + f"\n\nproxydhcp log tail:\n{tail}\n\nlab files: {lab.workdir}")


def _boot_and_check(lab, record_property, kind, mac, label, *, bridge="br0", relay=None, uuid=None):
    boot = lab.boot(kind, mac, label=label, bridge=bridge, uuid=uuid)
    record_property(f"boot_seconds_{label}", boot.marker_after)
    print(f"{label}: {'booted in %.1f s' % boot.marker_after if boot.ok else 'did not boot'}")
    cap = lab.capture()
    problems = fl.check_boot(boot, cap, corp=lab.corp_ip, relay=relay)
    problems += fl.check_proxy_discipline(cap, corp=lab.corp_ip, plain_macs=lab.plain_macs)
    assert not problems, _report(lab, boot, cap, problems)
    # proxydhcp's own account agrees: a succeeded session (the store writes in batches)
    text = fl.wait_for(lambda: (lambda s: s if " succeeded " in s else None)(lab.sessions(mac)), 10) \
        or lab.sessions(mac)
    assert " succeeded " in text and "boot_script" in text, text
    return boot, cap


@pytest.fixture(scope="module")
def segment(tmp_path_factory):
    with _lab(tmp_path_factory, "fw-segment") as lab:
        lab.plain_macs = (lab.plain_client(),)   # a non-PXE client proxydhcp must ignore
        yield lab


def test_uefi_vm_edk2_pxe_tftp_ipxe_http_script(segment, record_property):
    boot, cap = _boot_and_check(segment, record_property, "uefi", UEFI_MAC, "segment/uefi-edk2-pxe", uuid=UEFI_UUID)
    # proxydhcp's own TFTP served the firmware, and its own HTTP the script
    acks = [p for p in fl.proxy_replies(cap) if p.chaddr == UEFI_MAC and p.sport == 4011 and p.msg == "ACK"]
    assert acks[0].file == "ipxe.efi" and acks[0].siaddr == fl.PROXY
    # ... and proxydhcp's own record of the boot says the same
    sessions = segment.sessions(UEFI_MAC)
    assert "firmware_transfer" in sessions and "ipxe_dhcp" in sessions, sessions


def test_bios_vm_ipxe_rom_http_script(segment, record_property):
    boot, cap = _boot_and_check(segment, record_property, "bios", BIOS_MAC, "segment/bios-ipxe-rom")
    first = next(p for p in cap.for_mac(BIOS_MAC) if p.op == 1)
    assert first.is_ipxe and first.arch == 0, "the BIOS client is QEMU's iPXE ROM from its first DISCOVER"
    # no TFTP for it: the iPXE ROM goes straight to the HTTP script
    assert not [t for t in cap.tftp if t.client == boot.ip and t.time >= boot.started]


def test_uefi_vm_with_qemus_ipxe_efi_rom(segment, record_property):
    """QEMU's default NIC ROM under OVMF: iPXE from the first DISCOVER, arch 7, no TFTP."""
    boot, cap = _boot_and_check(segment, record_property, "uefi-ipxe-rom", IPXE_EFI_MAC, "segment/uefi-ipxe-rom",
                                uuid=UEFI_UUID)
    first = next(p for p in cap.for_mac(IPXE_EFI_MAC) if p.op == 1)
    assert first.is_ipxe and first.arch == 7
    assert not [t for t in cap.tftp if t.client == boot.ip and t.time >= boot.started]


def test_uefi_vm_behind_dhcrelay_on_another_subnet(tmp_path_factory, record_property):
    with _lab(tmp_path_factory, "fw-relay", relay=True) as lab:
        boot, cap = _boot_and_check(lab, record_property, "uefi", UEFI_MAC, "relay/uefi-edk2-pxe",
                                    bridge="br1", relay=fl.RELAY_DOWN, uuid=UEFI_UUID)
        assert boot.ip.startswith(fl.FAR_SUBNET + "."), boot.ip
        relayed = [p for p in cap.for_mac(UEFI_MAC) if p.op == 1 and p.giaddr == fl.RELAY_DOWN and p.dst == fl.PROXY]
        assert relayed, "dhcrelay forwarded nothing to proxydhcp"


def test_dnsmasq_and_proxydhcp_in_one_namespace_both_on_port_67(tmp_path_factory, record_property):
    with _lab(tmp_path_factory, "fw-samehost", same_host=True) as lab:
        lab.plain_macs = (lab.plain_client(),)
        assert lab.corp.poll() is None and lab.proxy.poll() is None
        _boot_and_check(lab, record_property, "uefi", UEFI_MAC, "same-host/uefi-edk2-pxe", uuid=UEFI_UUID)
        _boot_and_check(lab, record_property, "bios", BIOS_MAC, "same-host/bios-ipxe-rom")


FAIL_MAC = "52:54:00:e2:00:0f"


def test_session_of_a_good_boot_succeeds_and_a_missing_firmware_is_diagnosed(tmp_path_factory, segment):
    """proxydhcp's own account: the UEFI boot above is a succeeded session; a UEFI boot whose
    firmware file is missing is closed as failed, diagnosed firmware_transfer_failed."""
    good = segment.sessions(UEFI_MAC)
    assert "succeeded" in good and "boot_script" in good, good
    import os
    import shutil
    import tempfile
    # outside pytest's 0700 temp tree: the daemon reads it after dropping to an unprivileged user
    tftp_root = tempfile.mkdtemp(prefix="proxydhcp-e2e-root-")
    os.chmod(tftp_root, 0o755)
    shutil.copyfile("/usr/lib/ipxe/ipxe.efi", os.path.join(tftp_root, "ipxe.efi"))
    config = fl.TEST_CONFIG + f"""
tftp: {{root: {tftp_root}}}
boot: {{firmware: {{x64-uefi: ipxe.efi}}}}
events: {{stall_timeout: 8}}
"""
    missing = fl.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}")
    try:
        with fl.FirmwareLab(str(tmp_path_factory.mktemp("fw-missing")), config_yaml=config) as lab:
            os.remove(os.path.join(tftp_root, "ipxe.efi"))   # gone after start-up, as when a disk is cleaned
            boot = lab.boot("uefi", FAIL_MAC, label="missing-firmware/uefi (must fail)", uuid=UEFI_UUID, timeout=30)
            assert not boot.ok, "the VM cannot boot without its firmware file"
            text = fl.wait_for(lambda: (lambda s: s if "failed" in s else None)(lab.sessions(FAIL_MAC)), 40) \
                or lab.sessions(FAIL_MAC)
            assert "failed" in text and "firmware_transfer_failed" in text, text
            assert "not_found" in text, text
    finally:
        shutil.rmtree(tftp_root, ignore_errors=True)
