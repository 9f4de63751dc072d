"""What the hot-path shortcuts (issue 8) must keep true: the same answers as the slow way."""

import uuid

from hypothesis import given
from hypothesis import strategies as st

from proxydhcp import config
from proxydhcp.dhcp import options as opt
from proxydhcp.dhcp import pxe
from proxydhcp.dhcp.packet import decode
from proxydhcp.events import EventBus
from proxydhcp.net.dhcp_service import DHCPService
from proxydhcp.net.interfaces import InterfaceAddress
from proxydhcp.responder import firmware_file, settings_for
from proxydhcp import client as clientmod
from tests.dhcp_clients import request, request_bytes


@given(st.binary(min_size=16, max_size=16))
def test_uuid_text_is_what_the_uuid_module_says(raw):
    value = b"\x00" + raw
    assert pxe.decode_uuid(value) == str(uuid.UUID(bytes_le=raw))
    assert pxe.encode_uuid(pxe.decode_uuid(value)) == value


def test_decode_of_a_bytearray_or_memoryview_gives_bytes_values():
    data = request_bytes("ipxe", mac="52:54:00:12:34:56")
    want = decode(data)
    for form in (bytearray(data), memoryview(data)):
        got = decode(form)
        assert got == want
        assert all(type(v) is bytes for v in got.options.values())


def test_repeated_options_still_concatenate():
    data = bytearray(request_bytes("edk2"))
    end = data.rindex(b"\xff", 240)   # the END option: split 60 over two copies before it
    data[end:end] = bytes((opt.VENDOR_CLASS, 3)) + b"XYZ"
    got = decode(bytes(data))
    assert got.options[opt.VENDOR_CLASS].endswith(b"XYZ")
    assert got.options[opt.VENDOR_CLASS].startswith(b"PXEClient:Arch:00007")


def test_cached_vendor_options_are_the_same_bytes():
    a = pxe.pxe_vendor_options(False, pxe.BootItem(0x8000, 0))
    assert a == pxe.pxe_vendor_options(False, pxe.BootItem(0x8000, 0))
    assert pxe.decode_suboptions(a, "43")[opt.PXE_BOOT_ITEM] == b"\x80\x00\x00\x00"


def test_boot_file_name_follows_a_reload():
    c = clientmod.classify(request("legacy-bios"))
    one = config.parse("boot: {firmware: {bios: one.kpxe}}")
    two = config.parse("boot: {firmware: {bios: /srv/tftp/two.kpxe}}\ntftp: {root: /srv/tftp}")
    assert firmware_file(c, one, settings_for(c, one)) == "one.kpxe"
    assert firmware_file(c, two, settings_for(c, two)) == "two.kpxe"
    assert firmware_file(c, one, settings_for(c, one)) == "one.kpxe"


def test_4011_interface_follows_an_address_change():
    # Interface names that do not exist: refresh() cannot open a listener on them (and
    # says so), but it still records them, which is all a 4011 request needs.
    found = {"pdnone0": InterfaceAddress("pdnone0", 9999, "10.66.0.2", 24, 1500, True)}
    svc = DHCPService(config.LiveConfig(config.parse("")), EventBus(), interfaces=lambda: dict(found))
    svc.refresh()
    first = svc.served_interface(9999, None)
    assert (first.name, first.address, first.index) == ("pdnone0", "10.66.0.2", 9999)
    assert svc.served_interface(9999, "10.66.0.7").address == "10.66.0.7"   # IP_PKTINFO's address wins
    assert svc.served_interface(1234, None) is None
    found["pdnone0"] = InterfaceAddress("pdnone0", 9999, "10.66.0.3", 24, 1500, True)
    svc.refresh()
    assert svc.served_interface(9999, None).address == "10.66.0.3"
