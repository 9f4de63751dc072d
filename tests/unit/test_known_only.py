"""dhcp.known_machines_only: a machine that matches no group gets no reply at all (silence
reason unknown_machine, counted), from the responder's decision through the service's
counters to `proxydhcp explain`."""

import subprocess
import sys

import pytest

from proxydhcp import config, metrics
from proxydhcp.config import ConfigError
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import packet
from proxydhcp.events import DHCP_SILENCE, EventBus
from proxydhcp.net.dhcp_service import DHCPService
from proxydhcp.responder import (PORT_DHCP, PORT_PROXY, UNKNOWN_MACHINE, Interface, Reply, Silence,
                                 known_group, respond)
from tests.dhcp_clients import UUID, request, request_bytes

IFACE = Interface("eth0", "10.77.0.2", 2)
CLIENT = ("0.0.0.0", 68)

POLICY = """
dhcp: {known_machines_only: true}
profiles:
  rescue: {kernel: http://x/vmlinuz}
  installer: {kernel: http://x/install}
groups:
  - {name: lab-rack, profile: rescue, selectors: {mac: "52:54:00:10:*"}}
  - {name: one-box, profile: installer, selectors: {uuid: "%s"}}
  - {name: relayed-ipxe, profile: rescue, selectors: {subnet: 10.88.0.0/24, firmware: ipxe, user_class: iPXE}}
""" % UUID.replace("0002", "0099")

CFG = config.parse(POLICY)


def decide(pkt, cfg=CFG, port=PORT_DHCP, source=CLIENT):
    return respond(packet.decode(packet.encode(pkt)), port, IFACE, source, cfg)


def test_off_by_default_and_a_bool():
    assert config.parse(None).dhcp.known_machines_only is False
    with pytest.raises(ConfigError, match="known_machines_only"):
        config.parse("dhcp: {known_machines_only: 'yes'}")


def test_unknown_machine_gets_silence_with_the_reason():
    r = decide(request("legacy-bios", mac="52:54:00:20:00:01", uuid=None))
    assert isinstance(r, Silence) and r.reason == UNKNOWN_MACHINE
    assert "52:54:00:20:00:01" in r.detail and r.client.mac == "52:54:00:20:00:01"


def test_unknown_machine_is_silent_on_4011_and_as_ipxe_too():
    mac = "52:54:00:20:00:02"
    r = decide(request("edk2", mac=mac, message=opt.REQUEST, ciaddr="10.77.0.131", uuid=None), port=PORT_PROXY,
               source=("10.77.0.131", 4011))
    assert isinstance(r, Silence) and r.reason == UNKNOWN_MACHINE
    r = decide(request("ipxe", mac=mac, uuid=None))
    assert isinstance(r, Silence) and r.reason == UNKNOWN_MACHINE


@pytest.mark.parametrize("kind", ["legacy-bios", "edk2", "ipxe", "uefi-http"])
def test_a_machine_known_by_mac_is_answered_at_every_stage(kind):
    r = decide(request(kind, mac="52:54:00:10:00:07", uuid=None))
    assert isinstance(r, Reply), r


def test_a_machine_known_by_uuid_is_answered():
    uuid = UUID.replace("0002", "0099")
    assert isinstance(decide(request("edk2", mac="52:54:00:30:00:01", uuid=uuid)), Reply)
    assert isinstance(decide(request("edk2", mac="52:54:00:30:00:01", uuid=UUID)), Silence)


def test_firmware_and_user_class_selectors_do_not_decide_who_is_known():
    # The group wants iPXE on 10.88.0.0/24: the same machine's firmware DISCOVER through that
    # relay must be answered too, or iPXE would never run.
    relayed = request("legacy-bios", mac="52:54:00:40:00:01", giaddr="10.88.0.1", uuid=None)
    assert isinstance(decide(relayed, source=("10.88.0.1", 67)), Reply)
    elsewhere = request("legacy-bios", mac="52:54:00:40:00:01", giaddr="10.99.0.1", uuid=None)
    assert decide(elsewhere, source=("10.99.0.1", 67)).reason == UNKNOWN_MACHINE


def test_known_group_names_the_group():
    assert known_group(CFG, "52:54:00:10:aa:bb").name == "lab-rack"
    assert known_group(CFG, "52:54:00:11:aa:bb") is None
    assert known_group(CFG, "52:54:00:11:aa:bb", ip="10.88.0.9").name == "relayed-ipxe"


def test_a_default_group_knows_everyone():
    cfg = config.parse("dhcp: {known_machines_only: true}\nprofiles: {a: {exit: true}}\n"
                       "groups: [{name: all, profile: a}]")
    assert isinstance(decide(request("legacy-bios", mac="52:54:00:99:00:01"), cfg=cfg), Reply)


def test_no_groups_means_nobody_is_answered():
    cfg = config.parse("dhcp: {known_machines_only: true}")
    assert decide(request("legacy-bios"), cfg=cfg).reason == UNKNOWN_MACHINE


def test_not_pxe_stays_not_pxe():
    assert decide(request("plain")).reason == "not_pxe"


def test_the_service_counts_and_reports_the_silence():
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    svc = DHCPService(config.LiveConfig(CFG), bus, interfaces=lambda: {})
    sent = []

    class Tx:
        def send(self, payload, *rest):
            sent.append(payload)

    def count():
        return metrics.REGISTRY.get_sample_value(
            "proxydhcp_dhcp_packets_total", {"port": "67", "message": "discover", "result": UNKNOWN_MACHINE}) or 0

    before = count()
    for i in range(5):
        svc.handle(request_bytes("edk2", mac=f"52:54:00:20:01:{i:02x}", uuid=None), PORT_DHCP, IFACE, CLIENT, Tx())
    svc.handle(request_bytes("edk2", mac="52:54:00:10:01:01", uuid=None), PORT_DHCP, IFACE, CLIENT, Tx())
    assert count() == before + 5
    assert len(sent) == 1 and packet.decode(sent[0]).chaddr[:6] == bytes.fromhex("525400100101")
    reasons = [e["reason"] for e in seen if e["kind"] == DHCP_SILENCE]
    assert reasons == [UNKNOWN_MACHINE] * 5


def _explain(tmp_path, *args):
    path = tmp_path / "c.yaml"
    path.write_text(POLICY)
    return subprocess.run([sys.executable, "-m", "proxydhcp", "explain", "-c", str(path), *args],
                          capture_output=True, text=True, check=True).stdout


def test_explain_says_an_unknown_machine_gets_no_reply(tmp_path):
    out = _explain(tmp_path, "--mac", "52:54:00:20:00:01", "--arch", "7")
    assert "no reply at all" in out and UNKNOWN_MACHINE in out and "known_machines_only" in out
    assert "kernel" not in out.split("script:", 1)[1]


def test_explain_says_a_known_machine_is_answered(tmp_path):
    out = _explain(tmp_path, "--mac", "52:54:00:10:00:01", "--arch", "7")
    assert "answered: known through group 'lab-rack'" in out
    assert "http://x/vmlinuz" in out.split("script:", 1)[1]
