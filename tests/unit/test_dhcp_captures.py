"""Decoding every DHCP packet of the real captures gives what their .txt summaries say."""

import re
import socket

import pytest

from proxydhcp.client import IPXE, LEGACY_PXE, classify
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import packet, pxe
from tests import captures

NAMES = captures.capture_names()
pytestmark = pytest.mark.skipif(not NAMES, reason="../shared/captures is not beside the checkout")


def _pairs():
    for name in NAMES:
        for d, s in zip(captures.udp_datagrams(name), captures.summaries(name)):
            yield pytest.param(d, s, id=f"{name}@{s.time}s-{s.message}")


@pytest.mark.parametrize("name", NAMES)
def test_every_packet_has_its_summary_in_order_and_time(name):
    """One detailed summary per DHCP datagram of the capture (zip above would hide a missing
    one), in capture order, at the same times (the .txt counts from QEMU start, in ms)."""
    dgrams, summ = captures.udp_datagrams(name), captures.summaries(name)
    assert len(dgrams) == len(summ) > 0
    requests = ("DISCOVER", "REQUEST", "INFORM", "DECLINE", "RELEASE")
    assert len(captures.client_requests(name)) == sum(1 for s in summ if s.message in requests) > 0
    for d, s in zip(dgrams, summ):
        assert abs((d.time - dgrams[0].time) - (s.time - summ[0].time)) < 0.0015, (d, s)


_FLOW_OPTIONS = {"60": opt.VENDOR_CLASS, "77": opt.USER_CLASS, "93": opt.CLIENT_ARCH, "54": opt.SERVER_ID,
                 "175": opt.IPXE_ENCAP, "43": opt.VENDOR_SPECIFIC}
_PXE_SUBOPTIONS = {"DISCOVERY-CONTROL": opt.PXE_DISCOVERY_CONTROL, "BOOT-SERVERS": opt.PXE_BOOT_SERVERS,
                   "BOOT-MENU": opt.PXE_BOOT_MENU, "MENU-PROMPT": opt.PXE_MENU_PROMPT, "BOOT-ITEM": opt.PXE_BOOT_ITEM}


@pytest.mark.parametrize("name", NAMES)
def test_compact_flow_matches_decoded_packets(name):
    """The compact "DHCP flow" section, line by line, against the decoded packets: every
    field it shows, and for a client request exactly the options it lists (60 77 93 54 175)."""
    flow = captures.flow(name)
    dgrams = captures.udp_datagrams(name)
    assert len(flow) == len(dgrams)
    t0 = captures.summaries(name)[0].time - dgrams[0].time   # the .txt clock minus ours
    unmatched = list(dgrams)
    for line in flow:
        [d] = [d for d in unmatched if f"{d.src}:{d.sport}" == line.src and f"{d.dst}:{d.dport}" == line.dst
               and abs(d.time + t0 - line.time) < 0.0015]
        unmatched.remove(d)
        pkt = packet.decode(d.payload)
        assert (opt.message_name(pkt.message_type).upper(), pkt.xid) == (line.message, line.xid)
        for key in ("yiaddr", "siaddr"):
            assert line.fields.get(key, "0.0.0.0") == getattr(pkt, key)
        for key in ("sname", "file"):
            assert line.fields.get(key, "") == getattr(pkt, key).decode()
        shown = {k for k in line.fields if k.isdigit()}
        if pkt.op == packet.BOOTREQUEST:
            assert shown == {k for k, code in _FLOW_OPTIONS.items() if code in pkt.options}
        for key in shown:
            value = pkt.options[_FLOW_OPTIONS[key]]
            text = line.fields[key]
            if key == "93":
                assert pxe.decode_arch_list(value) == [int(text)]
            elif key == "54":
                assert socket.inet_ntoa(value) == text
            elif key == "175":
                assert text == "yes" and pxe.decode_ipxe_features(value)
            elif key == "77":
                assert pxe.decode_user_classes(value) == [text.encode()]
            elif key == "43":       # sub-options named in wire order, then END
                sub = pxe.decode_suboptions(value, "43")
                names = re.findall(r"(?:^| )([A-Z-]+)=", text)
                assert [_PXE_SUBOPTIONS[n] for n in names] == list(sub) and text.endswith(" END")
                if opt.PXE_BOOT_ITEM in sub:
                    item = pxe.decode_boot_item(sub[opt.PXE_BOOT_ITEM])
                    assert f"BOOT-ITEM=type {item.type} layer {item.layer} END" in text
            else:
                assert value.decode() == text
    assert unmatched == []


@pytest.mark.parametrize("dgram,summary", list(_pairs()))
def test_decode_matches_summary(dgram, summary):
    pkt = packet.decode(dgram.payload)
    assert f"{dgram.src}:{dgram.sport}" == summary.src
    assert f"{dgram.dst}:{dgram.dport}" == summary.dst
    assert opt.message_name(pkt.message_type).upper() == summary.message
    assert pkt.xid == summary.xid
    assert pkt.mac == summary.chaddr
    assert bool(pkt.flags & packet.BROADCAST_FLAG) == summary.broadcast
    assert list(pkt.options) == summary.present
    for key in ("ciaddr", "yiaddr", "siaddr"):
        if key in summary.header:
            assert getattr(pkt, key) == summary.header[key]
    if "sname" in summary.header:
        assert pkt.sname.decode() == summary.header["sname"]
        assert pkt.file.decode() == summary.header["file"]
    o = pkt.options
    for code, text in summary.opts.items():
        value = o[code]
        if code in (60, 77):
            assert pxe.decode_user_classes(value) == [text.strip("'").encode()] if code == 77 else value.decode() == text.strip("'")
        elif code == 93:
            assert pxe.decode_arch_list(value) == [int(text)]
        elif code == 94:
            ndi = pxe.decode_ndi(value)
            assert text == f"type {ndi.type} v{ndi.major}.{ndi.minor}"
        elif code == 97:
            wire = text.split("wire=")[1].split()[0]
            smbios = text.split("SMBIOS LE: ")[1].rstrip(")")
            assert value[0] == 0 and value[1:].hex() == wire.replace("-", "")
            assert pxe.decode_uuid(value) == smbios
        elif code == 55:
            assert list(value) == [int(x) for x in text.split(",")]
        elif code in (57, 51):
            assert int.from_bytes(value, "big") == int(text)
        elif code == 61:
            assert value.hex() == text
        elif code in (54, 50, 1, 3):
            assert socket.inet_ntoa(value) == text
        elif code == 175:
            features = pxe.decode_ipxe_features(value)
            expected = dict(kv.split("=", 1) for kv in text.split())
            assert {k.replace("_", "-"): str(v) for k, v in features.items()} == expected
        elif code == 43:
            raw = text.split("[raw ")[1].rstrip("]")
            assert value.hex() == raw
            sub = pxe.decode_suboptions(value, "43")
            assert (opt.PXE_DISCOVERY_CONTROL in sub) == ("DISCOVERY-CONTROL=0x03" in text)
            assert (opt.PXE_BOOT_ITEM in sub) == ("BOOT-ITEM=" in text)
            if opt.PXE_BOOT_ITEM in sub:
                item = pxe.decode_boot_item(sub[opt.PXE_BOOT_ITEM])
                assert f"BOOT-ITEM=type {item.type} layer {item.layer}" in text
        else:
            pytest.fail(f"summary option {code} not checked")


def test_captured_clients_classify_as_the_firmware_they_are():
    seen = {}
    for name in NAMES:
        for d in captures.client_requests(name):
            pkt = packet.decode(d.payload)
            c = classify(pkt)
            seen.setdefault(name, set()).add((c.firmware, c.arch_code))
    assert seen["ovmf-edk2-pxe-then-ipxe-efi"] == {(LEGACY_PXE, 7), (IPXE, 7)}
    assert seen["ovmf-ipxe-efi-rom"] == {(IPXE, 7)}
    assert seen["seabios-ipxe-rom"] == {(IPXE, 0)}


def test_captured_uuid_is_normalised_from_smbios_order():
    d = captures.client_requests("ovmf-edk2-pxe-then-ipxe-efi")[0]
    c = classify(packet.decode(d.payload))
    assert c.uuid == "6e65746c-6162-4000-8000-000000000002"  # QEMU -uuid as given


def test_captured_ipxe_features():
    d = captures.client_requests("seabios-ipxe-rom")[0]
    c = classify(packet.decode(d.payload))
    assert c.user_classes == ("iPXE",)
    assert c.ipxe_features["http"] == 1 and c.ipxe_features["bus_id"] == "PCI:1af4:1000"
    assert c.ipxe_features["version"] == "1.0.0"


@pytest.mark.parametrize("name", NAMES)
def test_reencode_roundtrip_of_captured_packets(name):
    for d in captures.udp_datagrams(name):
        pkt = packet.decode(d.payload)
        again = packet.decode(packet.encode(pkt))
        assert again == pkt
