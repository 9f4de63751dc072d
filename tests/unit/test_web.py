"""What the HTTP service takes from a request and from the bus, without sockets."""

from proxydhcp import config
from proxydhcp.events import DHCP_REPLY, EventBus
from proxydhcp.web.server import HTTPService, MachineRegistry, machine_from

MAC = "52:54:00:aa:bb:cc"


def test_machine_identity_from_query_peer_and_last_dhcp_reply():
    reg = MachineRegistry()
    reg.observe({"kind": DHCP_REPLY, "mac": MAC, "iface": "eth1", "arch": 7, "firmware": "ipxe",
                 "vendor_class": "PXEClient:Arch:00007", "user_classes": ["iPXE"], "client_ip": "10.0.0.9"})
    m = machine_from({"mac": MAC.upper().replace(":", "-"), "arch": "0"}, "10.0.0.9", reg)
    assert (m.mac, m.arch, m.ip, m.interface, m.firmware, m.user_classes) == (MAC, 0, "10.0.0.9", "eth1", "ipxe", ("iPXE",))
    assert machine_from({"mac": MAC}, "10.0.0.9", reg).arch == 7          # the DHCP reply's arch
    assert machine_from({"mac": MAC, "ip": "10.1.1.1"}, "10.0.0.9", reg).ip == "10.1.1.1"
    assert reg.mac_for_ip("10.0.0.9") == MAC


def test_values_that_would_reach_a_script_are_validated():
    reg = MachineRegistry()
    m = machine_from({"mac": MAC, "uuid": "x\nchain http://evil/", "ip": "1.2.3.4\nshell",
                      "arch": "7;shell", "hostname": "a b"}, "127.0.0.1", reg)
    assert m.uuid is None and m.ip == "127.0.0.1" and m.arch is None and m.hostname is None
    m = machine_from({"mac": MAC, "uuid": "{6E65746C-6162-4000-8000-000000000001}", "hostname": "web1.lab"}, None, reg)
    assert m.uuid == "6e65746c-6162-4000-8000-000000000001" and m.hostname == "web1.lab"
    assert machine_from({"mac": "nonsense"}, None, reg) is None
    assert machine_from({}, None, reg) is None


def test_registry_is_bounded_and_ignores_other_events():
    reg = MachineRegistry(size=3)
    reg.observe({"kind": "tftp.transfer", "mac": "x"})
    for i in range(5):
        reg.observe({"kind": DHCP_REPLY, "mac": f"52:54:00:00:00:0{i}"})
    assert list(reg.by_mac) == ["52:54:00:00:00:02", "52:54:00:00:00:03", "52:54:00:00:00:04"]


def test_firmware_files_are_the_configured_boot_files_only():
    cfg = config.parse("tftp: {root: /srv/tftp}\nboot: {firmware: {bios: undionly.kpxe, x64-uefi: /usr/lib/ipxe/ipxe.efi, "
                       "arm64-uefi: arm64/snp.efi}}")
    svc = HTTPService(config.LiveConfig(cfg), EventBus())
    assert svc.firmware_files() == {"undionly.kpxe": "/srv/tftp/undionly.kpxe", "ipxe.efi": "/usr/lib/ipxe/ipxe.efi",
                                     "snp.efi": "/srv/tftp/arm64/snp.efi"}


def test_policy_follows_the_running_config():
    live = config.LiveConfig(config.parse(None))
    svc = HTTPService(live, EventBus())
    first = svc.policy
    assert svc.policy is first
    live.current = config.parse("profiles: {l: {exit: true}}\ngroups: [{profile: l}]")
    assert svc.policy is not first and "l" in svc.policy.profiles
