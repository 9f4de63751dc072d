"""Every kind of boot profile, as proxydhcp renders it, runs in real iPXE.

BIOS VMs (SeaBIOS with QEMU's iPXE ROM) on a segment with a corporate dnsmasq, as in
test_firmware_boot; the kernel and the ISO are tiny images built by tests/e2e/boot_images.py
whose boot code prints on serial what iPXE handed them, then resets the VM.

- menu (a title iPXE would misread as options, a gap, keys, default + 1 s timeout)
  -> kernel profile: a Linux bzImage with a command line (template variables expanded) and
     an initrd; the kernel prints the command line and the initrd size from its header.
- chain profile: the URL of another group's script on proxydhcp
  -> sanboot profile: an El Torito ISO under http.root, which iPXE reads over HTTP with
     Range requests; the ISO's boot code prints the marker.
- exit (local boot): iPXE hands back to SeaBIOS, which finds no other boot device.
- a machine that no group matches gets the built-in menu, whose default (after 30 s) is
  local boot too.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import pytest

from tests.e2e import firmware_lab as fl
from tests.e2e.boot_images import eltorito_iso, linux_bzimage

REASON = fl.qemu_unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

WALK_MAC = "52:54:00:e2:00:21"
CHAIN_MAC = "52:54:00:e2:00:22"
ISO_MAC = "52:54:00:e2:00:23"     # never boots: its script is what the chain step fetches
LOCAL_MAC = "52:54:00:e2:00:24"
NOBODY_MAC = "52:54:00:e2:00:25"

MENU_TITLE = "-=[ proxydhcp e2e: every profile kind ]=-"
KERNEL_SAYS = "E2E-KERNEL cmdline=["
ISO_MARKER = f"{fl.MARKER} ip=iso mac={CHAIN_MAC}"
KERNEL_MARKER = f"{fl.MARKER} ip=kernel mac={WALK_MAC}"
INITRD = b"an initrd\n"
# SeaBIOS, once iPXE hands back and nothing else can boot
NO_BOOT_DEVICE = re.compile(r"No bootable device")

CONFIG = f"""
profiles:
  walk:
    menu:
      title: "{MENU_TITLE}"
      items:
        - {{gap: "-- each step is a profile of another kind --"}}
        - {{profile: step-kernel, key: k, label: "(k) kernel, initrd, command line"}}
        - {{profile: local, key: l}}
      default: step-kernel
      timeout: 1
  step-kernel:
    kernel: steps/linux
    initrd: [steps/initrd.txt]
    cmdline: "console=ttyS0 proxydhcp-mac={{{{ mac }}}} group={{{{ group }}}}"
  onward: {{chain: "{{{{ http }}}}/boot.ipxe?mac={ISO_MAC}"}}
  iso: {{sanboot: steps/boot.iso}}
  local: {{description: Local disk, exit: true}}
groups:
  - {{name: walkers, profile: walk, selectors: {{mac: "{WALK_MAC}"}}}}
  - {{name: chained, profile: onward, selectors: {{mac: "{CHAIN_MAC}"}}}}
  - {{name: isos, profile: iso, selectors: {{mac: "{ISO_MAC}"}}}}
  - {{name: locals, profile: local, selectors: {{mac: "{LOCAL_MAC}"}}}}
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    missing = fl.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: `make test` installs them (tools/debian-deps test)")
    # outside pytest's 0700 temp tree: the daemon reads it after dropping to an unprivileged user
    root = tempfile.mkdtemp(prefix="proxydhcp-e2e-http-")
    os.chmod(root, 0o755)
    os.mkdir(os.path.join(root, "steps"), 0o755)
    files = {"linux": linux_bzimage(f"\r\n{KERNEL_SAYS}", "] initrd bytes=0x", f"\r\n{KERNEL_MARKER}\r\n"),
             "initrd.txt": INITRD, "boot.iso": eltorito_iso(f"\r\n{ISO_MARKER}\r\n")}
    for name, data in files.items():
        with open(os.path.join(root, "steps", name), "wb") as fh:
            fh.write(data)
        os.chmod(fh.name, 0o644)
    config = CONFIG + f"http: {{root: {root}}}\n"
    try:
        with fl.FirmwareLab(str(tmp_path_factory.mktemp("fw-kinds")), config_yaml=config) as lab:
            yield lab
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _gets(cap, ip: str, since: float) -> list:
    return [h for h in cap.http if h.client == ip and h.server == fl.PROXY and h.time >= since]


def _client_ip(cap, mac: str, since: float) -> str | None:
    acks = [p.yiaddr for p in cap.for_mac(mac) if p.op == 2 and p.msg == "ACK" and p.server_id == fl.CORP
            and p.time >= since]
    return acks[-1] if acks else None


def _in_order(text: str, *parts: str) -> list[str]:
    """The parts of `parts` that do not appear in `text` in this order."""
    missing, at = [], 0
    for part in parts:
        found = text.find(part, at)
        if found < 0:
            missing.append(part)
        else:
            at = found + len(part)
    return missing


def _report(boot, gets, ip, lab) -> str:
    return (f"serial:\n{fl._plain(boot.serial)[-3000:]}\n\nHTTP from {ip}:\n"
            + "\n".join(f"  {h.line} -> {h.status}" for h in gets) + f"\n\nlab files: {lab.workdir}")


def _http_steps(gets, *steps: tuple[str, str]) -> list:
    """The index in `gets` of the first request matching each (pattern, status)."""
    return [next((i for i, h in enumerate(gets) if re.search(pattern, h.line) and h.status
                  and f" {status}" in h.status), None) for pattern, status in steps]


def _mac_q(mac: str) -> str:
    return f"(?:{re.escape(mac)}|{re.escape(mac.replace(':', '%3A'))})"


def _boot(lab, record_property, mac: str, label: str):
    """Boot a BIOS VM until the marker; what it printed, its HTTP requests and a report."""
    boot = lab.boot("bios", mac, label=label)
    record_property(f"boot_seconds_{label}", boot.marker_after)
    cap = lab.capture()
    ip = _client_ip(cap, mac, boot.started)
    gets = _gets(cap, ip, boot.started) if ip else []
    return boot, cap, fl._plain(boot.serial), gets, _report(boot, gets, ip, lab)


def test_menu_then_kernel_with_initrd_and_command_line(lab, record_property):
    boot, cap, serial, gets, report = _boot(lab, record_property, WALK_MAC, "kinds/menu-kernel")
    assert boot.ok and boot.ip == "kernel", "the kernel never printed its marker\n" + report

    # the menu, then the kernel's own account of what iPXE handed it
    missing = _in_order(serial, MENU_TITLE, "each step is a profile of another kind",
                        "kernel, initrd, command line", "Local disk",
                        f"{KERNEL_SAYS}console=ttyS0 proxydhcp-mac={WALK_MAC} group=walkers]", KERNEL_MARKER)
    assert not missing, f"not on serial in this order: {missing}\n" + report
    size = re.search(r"initrd bytes=0x([0-9A-F]{8})", serial)
    assert size and int(size.group(1), 16) >= len(INITRD), "the kernel got no initrd\n" + report
    assert "proxydhcp: booting failed" not in serial, report

    steps = _http_steps(gets, (rf"GET /boot\.ipxe\?mac={_mac_q(WALK_MAC)}", "200"),
                        (r"GET /steps/linux ", "200"), (r"GET /steps/initrd\.txt ", "200"))
    assert None not in steps and steps == sorted(steps), f"HTTP steps (index in the capture): {steps}\n" + report
    assert not fl.check_proxy_discipline(cap, corp=lab.corp_ip)


def test_chain_then_sanboot_of_an_iso(lab, record_property):
    boot, cap, serial, gets, report = _boot(lab, record_property, CHAIN_MAC, "kinds/chain-sanboot")
    assert boot.ok and boot.ip == "iso", "the ISO's boot code never printed its marker\n" + report
    assert "proxydhcp: booting failed" not in serial, report

    # the chain step fetched the other group's script, which sanbooted the ISO: iPXE reads it
    # in pieces, Range requests answered 206
    steps = _http_steps(gets, (rf"GET /boot\.ipxe\?mac={_mac_q(CHAIN_MAC)}", "200"),
                        (rf"GET /boot\.ipxe\?mac={_mac_q(ISO_MAC)}", "200"),
                        (r"GET /steps/boot\.iso ", "206"))
    assert None not in steps and steps == sorted(steps), f"HTTP steps (index in the capture): {steps}\n" + report
    assert not fl.check_proxy_discipline(cap, corp=lab.corp_ip)


def test_exit_profile_hands_the_machine_back_to_the_bios(lab, record_property):
    boot = lab.boot("bios", LOCAL_MAC, label="kinds/exit", until=NO_BOOT_DEVICE, ends_itself=False, timeout=90)
    record_property("boot_seconds_kinds_exit", boot.marker_after)
    serial = fl._plain(boot.serial)
    assert boot.ok, f"SeaBIOS never said it had nothing left to boot:\n{serial[-3000:]}"
    missing = _in_order(serial, "proxydhcp: local boot", "No bootable device")
    assert not missing, f"not on serial in this order: {missing}\n{serial[-3000:]}"
    assert "booting failed" not in serial


def test_a_machine_no_group_matches_gets_the_builtin_menu(lab, record_property):
    boot = lab.boot("bios", NOBODY_MAC, label="kinds/built-in-menu", until=NO_BOOT_DEVICE, ends_itself=False,
                    timeout=120)
    record_property("boot_seconds_kinds_builtin", boot.marker_after)
    serial = fl._plain(boot.serial)
    assert boot.ok, f"the built-in menu's default (local boot) never handed back to SeaBIOS:\n{serial[-3000:]}"
    missing = _in_order(serial, f"proxydhcp: MAC {NOBODY_MAC}", "rule:", "no boot profile for this machine",
                        "Boot from the local disk", "iPXE shell", "Ask proxydhcp again", "No bootable device")
    assert not missing, f"not on serial in this order: {missing}\n{serial[-3000:]}"
