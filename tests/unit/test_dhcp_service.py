"""The service's hot path without sockets: access rules, rate limits, metrics and events."""

from proxydhcp import config, metrics
from proxydhcp.dhcp.packet import decode
from proxydhcp.events import DHCP_REPLY, DHCP_SILENCE, EventBus
from proxydhcp.net.dhcp_service import DHCPService
from proxydhcp.responder import PORT_DHCP, Interface
from tests.dhcp_clients import request_bytes


class FakeSender:
    def __init__(self):
        self.sent = []

    def send(self, payload, server, dest, *rest):
        self.sent.append((decode(payload), server, dest))


def service(text=""):
    bus = EventBus()
    events = []
    bus.subscribe(events.append)
    svc = DHCPService(config.LiveConfig(config.parse(text)), bus, interfaces=lambda: {})
    return svc, events, FakeSender()


IFACE = Interface("eth0", "10.77.0.2", 2)


def value(result, message="discover"):
    return metrics.REGISTRY.get_sample_value("proxydhcp_dhcp_packets_total",
                                             {"port": "67", "message": message, "result": result}) or 0


def test_reply_is_sent_counted_and_emitted():
    svc, events, tx = service()
    before = value("replied")
    svc.handle(request_bytes("legacy-bios", mac="52:54:00:00:00:01"), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx)
    assert len(tx.sent) == 1 and tx.sent[0][2] == ("255.255.255.255", 68)
    assert value("replied") == before + 1
    [e] = [e for e in events if e["kind"] == DHCP_REPLY]
    assert e["mac"] == "52:54:00:00:00:01" and e["firmware"] == "legacy-pxe" and e["boot_file"] == "undionly.kpxe"


def test_deny_list_gives_silence_with_reason():
    svc, events, tx = service("dhcp: {deny_macs: ['52:54:00:66']}")
    svc.handle(request_bytes("edk2", mac="52:54:00:66:00:01"), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx)
    assert tx.sent == []
    [e] = events
    assert e["kind"] == DHCP_SILENCE and e["reason"] == "policy" and "deny" in e["detail"]


def test_allow_subnets_uses_the_relay_address():
    svc, events, tx = service("dhcp: {allow_subnets: [10.88.0.0/24]}")
    svc.handle(request_bytes("edk2", giaddr="10.88.0.1"), PORT_DHCP, IFACE, ("10.88.0.1", 67), tx)
    svc.handle(request_bytes("edk2", giaddr="10.99.0.1"), PORT_DHCP, IFACE, ("10.99.0.1", 67), tx)
    svc.handle(request_bytes("edk2"), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx)   # local: our 10.77.0.2
    assert [d for _, _, d in tx.sent] == [("10.88.0.1", 67)]


def test_a_looping_mac_is_limited_and_others_still_answered():
    svc, events, tx = service("dhcp: {rate_per_mac: 1, burst_per_mac: 3}")
    before = value("rate_limited")
    for _ in range(50):
        svc.handle(request_bytes("edk2", mac="52:54:00:00:00:aa"), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx,
                   source_key=b"\x52\x54\x00\x00\x00\xaa")
    assert len(tx.sent) == 3 and value("rate_limited") == before + 47
    svc.handle(request_bytes("edk2", mac="52:54:00:00:00:bb"), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx,
               source_key=b"\x52\x54\x00\x00\x00\xbb")
    assert len(tx.sent) == 4


def test_flood_from_one_sender_with_random_macs_is_limited_per_source():
    svc, events, tx = service("dhcp: {rate_per_source: 1, burst_per_source: 10}")
    for i in range(100):
        svc.handle(request_bytes("edk2", mac=f"52:54:00:01:00:{i:02x}"), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx,
                   source_key=b"flooder")
    assert len(tx.sent) == 10
    svc.handle(request_bytes("edk2", mac="52:54:00:02:00:01"), PORT_DHCP, IFACE, ("0.0.0.0", 68), tx,
               source_key=b"honest")
    assert len(tx.sent) == 11


def test_malformed_is_counted():
    svc, events, tx = service()
    before = value("malformed", "unknown")
    svc.handle(b"\x01" * 50, PORT_DHCP, IFACE, ("0.0.0.0", 68), tx)
    assert value("malformed", "unknown") == before + 1 and tx.sent == [] and events == []


def test_another_servers_pxe_offer_is_noticed_once(caplog):
    from proxydhcp.dhcp.packet import encode
    from proxydhcp.net.interfaces import InterfaceAddress
    from proxydhcp.responder import respond
    svc, events, tx = service()
    svc.interfaces = {"eth0": InterfaceAddress("eth0", 2, "10.77.0.2", 24, 1500, True)}
    other = respond(decode(request_bytes("legacy-bios")), PORT_DHCP, Interface("eth0", "10.77.0.9"),
                    ("0.0.0.0", 68), config.parse(None))
    ours = respond(decode(request_bytes("legacy-bios")), PORT_DHCP, IFACE, ("0.0.0.0", 68), config.parse(None))
    before = metrics.REGISTRY.get_sample_value("proxydhcp_foreign_pxe_replies_total")
    for _ in range(3):
        svc.observe_reply(encode(other.packet), "10.77.0.9", svc.interfaces["eth0"])
    svc.observe_reply(encode(ours.packet), "10.77.0.2", svc.interfaces["eth0"])
    assert metrics.REGISTRY.get_sample_value("proxydhcp_foreign_pxe_replies_total") == before + 3
    warnings = [r for r in caplog.records if "another DHCP server (10.77.0.9)" in r.getMessage()]
    assert len(warnings) == 1


def test_which_interfaces_are_served():
    """dhcp.interfaces empty: every interface read_interfaces finds up (it leaves loopback
    out); a list: only those. Names that do not exist here: no listener opens, the choice
    is still recorded."""
    from proxydhcp.net.interfaces import InterfaceAddress, read_interfaces
    assert "lo" not in read_interfaces()
    found = {"pdnone0": InterfaceAddress("pdnone0", 9990, "10.66.0.2", 24, 1500, True),
             "pdnone1": InterfaceAddress("pdnone1", 9991, "10.67.0.2", 24, 1500, True),
             "pdnone2": InterfaceAddress("pdnone2", 9992, "10.68.0.2", 24, 1500, False)}   # down
    for text, served in (("", {"pdnone0", "pdnone1"}), ("interfaces: [pdnone1, pdnone2]", {"pdnone1"})):
        svc = DHCPService(config.LiveConfig(config.parse(text)), EventBus(), interfaces=lambda: dict(found))
        svc.refresh()
        assert set(svc.interfaces) == served
        assert (svc.served_interface(9990, None) is None) == ("pdnone0" not in served)   # 4011 follows suit
