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


def test_selectors_a_url_does_not_carry_come_from_the_real_dhcp_reply_event():
    """The DHCP service and the HTTP service on one bus, as in the daemon: the interface,
    firmware kind, vendor class and user class of the machine's last reply select its group
    (field names are a contract between two modules; this holds them together)."""
    from proxydhcp import policy
    from proxydhcp.net.dhcp_service import DHCPService
    from proxydhcp.responder import PORT_DHCP, Interface
    from tests.dhcp_clients import request_bytes
    live = config.LiveConfig(config.parse("""
profiles: {local: {exit: true}, ipxe: {exit: true}, http: {exit: true}}
groups:
  - {name: default, profile: local}
  - {name: ipxe-on-lab, profile: ipxe, selectors: {interface: "lab*", firmware: ipxe, user_class: iPXE,
                                                   vendor_class: "PXEClient:Arch:00007:*"}}
  - {name: http-on-lab, profile: http, selectors: {interface: "lab*", firmware: uefi-http, subnet: 10.0.0.0/8,
                                                   vendor_class: "HTTPClient:*"}}
"""))
    bus = EventBus()
    dhcp = DHCPService(live, bus, interfaces=lambda: {})
    web = HTTPService(live, bus)

    class Tx:
        def send(self, *args):
            pass

    def group_after(kind, mac, iface):
        dhcp.handle(request_bytes(kind, mac=mac), PORT_DHCP, Interface(iface, "10.77.0.2", 2), ("0.0.0.0", 68), Tx())
        m = machine_from({"mac": mac}, "10.77.0.50", web.registry)
        return m, web.policy.match(m).group_name

    m, group = group_after("ipxe", "52:54:00:0a:00:01", "lab0")
    assert (m.interface, m.firmware, m.user_classes, m.arch) == ("lab0", "ipxe", ("iPXE",), 7)
    assert m.uuid == policy.normalise_uuid(m.uuid) and m.uuid                 # option 97, as the reply saw it
    assert group == "ipxe-on-lab"
    assert group_after("ipxe", "52:54:00:0a:00:02", "office0")[1] == "default"   # another interface
    m, group = group_after("uefi-http", "52:54:00:0a:00:03", "lab1")
    assert (m.firmware, m.vendor_class, m.arch) == ("uefi-http", "HTTPClient:Arch:00016:UNDI:003000", 16)
    assert group == "http-on-lab"
