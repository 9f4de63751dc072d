"""One rule names a configured boot file: the name the responder hands out is the name the
TFTP server (and /firmware/ over HTTP) serves the operator's file under."""

import pytest

from proxydhcp import config
from proxydhcp.config import boot_file
from proxydhcp.responder import PORT_DHCP, Interface, respond
from proxydhcp.tftp.files import boot_files
from tests.dhcp_clients import request


@pytest.mark.parametrize("value,name,path", [
    ("ipxe.efi", "ipxe.efi", "/srv/tftp/ipxe.efi"),
    ("./x64//ipxe.efi", "x64/ipxe.efi", "/srv/tftp/x64/ipxe.efi"),
    ("/srv/tftp/x64/snp.efi", "x64/snp.efi", "/srv/tftp/x64/snp.efi"),
    ("/usr/lib/ipxe/ipxe.efi", "ipxe.efi", "/usr/lib/ipxe/ipxe.efi"),
])
def test_boot_file_rule(value, name, path):
    assert boot_file(value, "/srv/tftp") == (name, path)


def test_what_the_responder_hands_out_is_what_tftp_serves():
    cfg = config.parse("tftp: {root: /srv/tftp}\n"
                       "boot: {firmware: {bios: ./undionly.kpxe, x64-uefi: /usr/lib/ipxe/ipxe.efi}}\n"
                       "dhcp: {quirks: [{match: {arch: [7], mac_prefix: '52:54:00:99'}, "
                       "set: {redirect_4011: false, firmware: /opt/fw/snponly.efi}}]}\n")
    served = boot_files(cfg)
    iface = Interface("eth0", "10.0.0.2")
    for req in (request("legacy-bios"), request("edk2", mac="52:54:00:99:00:01")):
        r = respond(req, PORT_DHCP, iface, ("0.0.0.0", 68), cfg)
        name = r.packet.file.decode()
        assert name in served, (name, served)
    assert served["snponly.efi"] == "/opt/fw/snponly.efi"
    assert served["undionly.kpxe"] == "/srv/tftp/undionly.kpxe"
