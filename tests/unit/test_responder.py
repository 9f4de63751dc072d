"""The ProxyDHCP decision, from hand-built and captured client bytes of each firmware kind."""

import socket

import pytest

from proxydhcp import config
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import packet, pxe
from proxydhcp.responder import (IGNORED_MESSAGE, MALFORMED, NO_BOOT_FILE, NOT_PXE, POLICY, PORT_DHCP,
                                 PORT_PROXY, Interface, Reply, Silence, respond)
from tests import captures
from tests.dhcp_clients import UUID, request

IFACE = Interface("eth0", "10.77.0.2", 2)
CFG = config.parse(None)
CLIENT = ("0.0.0.0", 68)


def answer(pkt, port=PORT_DHCP, source=CLIENT, cfg=CFG, **kw):
    """Respond, then put the reply through the wire codec as a client would see it."""
    r = respond(packet.decode(packet.encode(pkt)), port, IFACE, source, cfg, **kw)
    if isinstance(r, Reply):
        r.wire = packet.decode(packet.encode(r.packet))
    return r


def common_checks(r, req):
    rep = r.wire
    assert rep.op == 2 and rep.xid == req.xid and rep.chaddr == req.chaddr
    assert rep.yiaddr == "0.0.0.0"                               # never an address
    assert rep.message_type in (opt.OFFER, opt.ACK)              # never a NAK
    assert rep.options[opt.SERVER_ID] == socket.inet_aton("10.77.0.2")
    assert rep.siaddr == "10.77.0.2"
    if opt.CLIENT_UUID in req.options:
        assert rep.options[opt.CLIENT_UUID] == req.options[opt.CLIENT_UUID]
    assert len(packet.encode(r.packet)) >= 300
    assert opt.OVERLOAD not in rep.options


def test_bios_legacy_pxe_offer_has_discovery_control_and_file():
    req = request("legacy-bios")
    r = answer(req)
    common_checks(r, req)
    assert r.message == "offer" and r.wire.message_type == opt.OFFER
    assert r.wire.file == b"undionly.kpxe"
    assert r.wire.options[opt.VENDOR_CLASS] == b"PXEClient"
    sub = pxe.decode_suboptions(r.wire.options[opt.VENDOR_SPECIFIC], "43")
    assert sub[opt.PXE_DISCOVERY_CONTROL] == b"\x08"
    assert not {1, 2, 3, 4, 5} & set(sub)      # EDK2 drops offers with multicast TFTP options
    assert opt.PXE_BOOT_MENU not in sub
    assert list(r.wire.options)[:4] == [opt.MESSAGE_TYPE, opt.SERVER_ID, opt.VENDOR_CLASS, opt.CLIENT_UUID]
    assert r.dest == ("255.255.255.255", 68)


def test_uefi_legacy_pxe_offer_redirects_to_4011():
    req = request("edk2")
    r = answer(req)
    common_checks(r, req)
    assert r.wire.file == b"" and opt.VENDOR_SPECIFIC not in r.wire.options
    assert r.boot_file == ""


def test_uefi_redirect_is_a_per_class_quirk():
    cfg = config.parse("dhcp:\n  quirks:\n    - match: {arch: [7]}\n      set: {redirect_4011: false, reply_delay_ms: 150}\n")
    r = answer(request("edk2"), cfg=cfg)
    assert r.wire.file == b"ipxe.efi" and opt.VENDOR_SPECIFIC in r.wire.options
    assert r.delay == 0.15
    r = answer(request("edk2", arch=6), cfg=config.parse(
        "boot: {firmware: {x86-uefi: ipxe-i386.efi}}\ndhcp:\n  quirks:\n    - match: {arch: [7]}\n      set: {redirect_4011: false}\n"))
    assert r.wire.file == b""   # arch 6 not matched: still redirected


def test_ack_on_4011_for_edk2_goes_back_to_source_port():
    req = request("edk2", message=opt.REQUEST, ciaddr="10.77.0.131", xid=0x5C95EA97)
    r = answer(req, port=PORT_PROXY, source=("10.77.0.131", 4011))
    common_checks(r, req)
    assert r.message == "ack" and r.wire.message_type == opt.ACK
    assert r.wire.ciaddr == "10.77.0.131"
    assert r.wire.file == b"ipxe.efi" and r.wire.sname == b"10.77.0.2"
    assert r.dest == ("10.77.0.131", 4011)


def test_ack_on_4011_for_ipxe_from_port_68():
    req = request("ipxe", message=opt.REQUEST, ciaddr="10.77.0.131")
    r = answer(req, port=PORT_PROXY, source=("10.77.0.131", 68))
    common_checks(r, req)
    assert r.dest == ("10.77.0.131", 68)
    assert r.wire.file.startswith(b"http://10.77.0.2:8080/boot.ipxe?mac=52:54:00:77:00:02&arch=7")


def test_ipxe_gets_script_url_not_firmware():
    req = request("ipxe")
    r = answer(req)
    common_checks(r, req)
    assert r.wire.file == f"http://10.77.0.2:8080/boot.ipxe?mac=52:54:00:77:00:02&arch=7&uuid={UUID}&ip=${{netX/ip}}".encode()
    sub = pxe.decode_suboptions(r.wire.options[opt.VENDOR_SPECIFIC], "43")
    assert opt.PXE_BOOT_MENU not in sub     # iPXE has no PXE menu boot


@pytest.mark.parametrize("uc", [b"iPXE", b"\x04iPXE", b"gPXE", b"\x03foo\x04iPXE"])
def test_ipxe_recognised_by_user_class_in_both_forms(uc):
    req = request("ipxe", user_class=uc)
    del req.options[opt.IPXE_ENCAP]
    assert answer(req).client.firmware == "ipxe"


def test_ipxe_recognised_by_option_175_alone():
    req = request("ipxe")
    del req.options[opt.USER_CLASS]
    c = answer(req).client
    assert c.firmware == "ipxe" and c.user_classes == () and c.ipxe_features["http"] == 1


def test_custom_user_class_marks_our_ipxe():
    req = request("ipxe", user_class=b"mybuild")
    del req.options[opt.IPXE_ENCAP]
    assert answer(req).client.firmware == "legacy-pxe"
    cfg = config.parse("dhcp: {custom_user_class: mybuild}")
    assert answer(req, cfg=cfg).client.firmware == "ipxe"


def test_uefi_http_gets_url_and_httpclient():
    req = request("uefi-http")
    r = answer(req)
    common_checks(r, req)
    assert r.wire.options[opt.VENDOR_CLASS] == b"HTTPClient"
    assert r.wire.file == b"http://10.77.0.2:8080/firmware/ipxe.efi"
    assert opt.VENDOR_SPECIFIC not in r.wire.options


def test_relayed_request_is_answered_to_giaddr_with_broadcast_flag():
    req = request("legacy-bios", giaddr="10.88.0.1")
    req.flags = 0
    r = answer(req, source=("10.88.0.1", 67))
    assert r.dest == ("10.88.0.1", 67)
    assert r.wire.giaddr == "10.88.0.1" and r.wire.flags & packet.BROADCAST_FLAG


def test_client_with_address_is_unicast():
    r = answer(request("ipxe", ciaddr="10.77.0.50"))
    assert r.dest == ("10.77.0.50", 68)


@pytest.mark.parametrize("msg", [opt.REQUEST, opt.INFORM, opt.RELEASE, opt.DECLINE])
def test_other_messages_on_67_get_silence(msg):
    r = answer(request("edk2", message=msg))
    assert isinstance(r, Silence) and r.reason == IGNORED_MESSAGE


def test_boot_server_request_with_boot_item_on_67_gets_ack_with_item():
    item = pxe.encode_suboptions([(opt.PXE_BOOT_ITEM, b"\x80\x03\x00\x00")])
    req = request("legacy-bios", message=opt.REQUEST, extra={opt.VENDOR_SPECIFIC: item})
    r = answer(req)
    assert r.message == "ack"
    sub = pxe.decode_suboptions(r.wire.options[opt.VENDOR_SPECIFIC], "43")
    assert sub[opt.PXE_BOOT_ITEM] == b"\x80\x03\x00\x00"


def test_non_pxe_client_gets_silence_on_both_ports():
    for port in (PORT_DHCP, PORT_PROXY):
        for msg in (opt.DISCOVER, opt.REQUEST):
            r = answer(request("plain", message=msg), port=port)
            assert isinstance(r, Silence) and r.reason == NOT_PXE


def test_discover_on_4011_is_ignored():
    r = answer(request("edk2"), port=PORT_PROXY, source=("10.0.0.5", 4011))
    assert r.reason == IGNORED_MESSAGE


def test_arch_without_firmware_is_named():
    r = answer(request("edk2", arch=11))
    assert isinstance(r, Silence) and r.reason == NO_BOOT_FILE and "arm64-uefi" in r.detail


def test_policy_refusal():
    r = answer(request("edk2"), allowed=lambda c: "mac denied")
    assert r.reason == POLICY


def test_malformed_arch_is_silence_not_crash():
    req = request("edk2")
    req.options[opt.CLIENT_ARCH] = b"\x00"
    req.options[opt.VENDOR_CLASS] = b"PXEClient"
    assert answer(req).reason == MALFORMED


def test_pxe_client_without_option_93_is_bios():
    req = request("legacy-bios")
    del req.options[opt.CLIENT_ARCH]
    req.options[opt.VENDOR_CLASS] = b"PXEClient"
    assert answer(req).wire.file == b"undionly.kpxe"


def test_server_address_override_and_long_url_goes_to_option_67():
    cfg = config.parse("dhcp: {server_address: 192.0.2.10}\nboot: {script_path: /" + "x" * 80 + ".ipxe}")
    r = answer(request("ipxe"), cfg=cfg)
    assert r.wire.siaddr == "192.0.2.10" and r.wire.file == b""
    assert r.wire.options[opt.BOOTFILE_NAME].startswith(b"http://192.0.2.10:8080/xxx")


# --- the real firmware's bytes -------------------------------------------------------

def _captured(name, port):
    for d in captures.client_requests(name):
        if d.dport == port:
            yield d


@pytest.mark.skipif(not captures.capture_names(), reason="../shared/captures missing")
def test_replay_edk2_capture():
    name = "ovmf-edk2-pxe-then-ipxe-efi"
    msgs = []
    for d in captures.client_requests(name):
        port = PORT_PROXY if d.dport == 4011 else PORT_DHCP
        r = respond(packet.decode(d.payload), port, IFACE, (d.src, d.sport), CFG)
        msgs.append((d.dport, r.message if isinstance(r, Reply) else r.reason,
                     r.boot_file.split("?")[0] if isinstance(r, Reply) else None,
                     r.dest if isinstance(r, Reply) else None))
    assert msgs == [
        (67, "offer", "", ("255.255.255.255", 68)),                  # EDK2 DISCOVER -> bare offer
        (67, IGNORED_MESSAGE, None, None),                          # its REQUEST to the corporate server
        (4011, "ack", "ipxe.efi", ("10.77.0.131", 4011)),           # 4011 request -> firmware
        (67, "offer", "http://10.77.0.2:8080/boot.ipxe", ("255.255.255.255", 68)),  # iPXE DISCOVER
        (67, IGNORED_MESSAGE, None, None),                          # iPXE REQUEST to the corporate server
        (4011, "ack", "http://10.77.0.2:8080/boot.ipxe", ("10.77.0.131", 68)),
    ]


@pytest.mark.skipif(not captures.capture_names(), reason="../shared/captures missing")
@pytest.mark.parametrize("name,arch", [("seabios-ipxe-rom", 0), ("ovmf-ipxe-efi-rom", 7)])
def test_replay_ipxe_rom_captures(name, arch):
    for d in captures.client_requests(name):
        port = PORT_PROXY if d.dport == 4011 else PORT_DHCP
        req = packet.decode(d.payload)
        r = respond(req, port, IFACE, (d.src, d.sport), CFG)
        if req.message_type == opt.DISCOVER or port == PORT_PROXY:
            assert isinstance(r, Reply), r
            assert r.boot_file.startswith(f"http://10.77.0.2:8080/boot.ipxe?mac={req.mac}&arch={arch}")
        else:
            assert isinstance(r, Silence)


@pytest.mark.parametrize("raw", [b"\x00" * 17, b"\x00" + b"\xff" * 16])
def test_unset_uuid_is_treated_as_absent_but_still_echoed(raw):
    req = request("ipxe")
    req.options[opt.CLIENT_UUID] = raw
    r = answer(req)
    assert r.client.uuid is None and b"uuid=" not in r.wire.file
    assert r.wire.options[opt.CLIENT_UUID] == raw
