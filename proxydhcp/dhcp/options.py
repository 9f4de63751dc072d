"""DHCP option codes and message types used by proxydhcp: the one place for these numbers."""

PAD = 0
SUBNET_MASK = 1
ROUTER = 3
DNS = 6
HOSTNAME = 12
VENDOR_SPECIFIC = 43        # PXE sub-options (PXE 2.1), RFC 2132 8.4 encoding
REQUESTED_IP = 50
LEASE_TIME = 51
OVERLOAD = 52               # 1: file holds options, 2: sname holds options, 3: both
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAMETER_LIST = 55
MAX_MESSAGE_SIZE = 57
VENDOR_CLASS = 60
CLIENT_ID = 61
TFTP_SERVER_NAME = 66
BOOTFILE_NAME = 67
USER_CLASS = 77             # RFC 3004 (length-prefixed list), or iPXE's raw "iPXE"
RELAY_AGENT = 82
CLIENT_ARCH = 93            # RFC 4578: list of u16
CLIENT_NDI = 94             # RFC 4578: {1, major, minor}
CLIENT_UUID = 97            # RFC 4578: type 0 + 16-byte GUID
IPXE_ENCAP = 175            # iPXE encapsulated options (feature flags)
END = 255

# Message types (option 53)
DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8

MESSAGE_NAMES = {DISCOVER: "discover", OFFER: "offer", REQUEST: "request", DECLINE: "decline",
                 ACK: "ack", NAK: "nak", RELEASE: "release", INFORM: "inform"}


def message_name(mtype: int | None) -> str:
    """Bounded label for a message type (metrics, logs)."""
    if mtype is None:
        return "bootp"
    return MESSAGE_NAMES.get(mtype, "other")


# PXE option 43 sub-options (PXE 2.1 spec, table 2-1)
PXE_MTFTP_IP = 1
PXE_MTFTP_CPORT = 2
PXE_MTFTP_SPORT = 3
PXE_MTFTP_TMOUT = 4
PXE_MTFTP_DELAY = 5
PXE_DISCOVERY_CONTROL = 6
PXE_DISCOVERY_MCAST_ADDR = 7
PXE_BOOT_SERVERS = 8
PXE_BOOT_MENU = 9
PXE_MENU_PROMPT = 10
PXE_BOOT_ITEM = 71

# Discovery control bits (43.6)
DISCOVERY_NO_BROADCAST = 0x01
DISCOVERY_NO_MULTICAST = 0x02
DISCOVERY_SERVER_LIST_ONLY = 0x04
DISCOVERY_BOOTFILE_PRESENT = 0x08  # skip prompt, menu and discovery: boot the file

# iPXE option 175 feature sub-options
IPXE_FEATURES = {
    0x01: "priority", 0x08: "keep_san", 0x09: "skip_san_boot", 0x10: "pxeext", 0x11: "iscsi",
    0x12: "aoe", 0x13: "http", 0x14: "https", 0x15: "tftp", 0x16: "ftp", 0x17: "dns",
    0x18: "bzimage", 0x19: "multiboot", 0x1A: "slam", 0x1B: "srp", 0x20: "nbi", 0x21: "pxe",
    0x22: "elf", 0x23: "comboot", 0x24: "efi", 0x25: "fcoe", 0x26: "vlan", 0x27: "menu",
    0x28: "sdi", 0x29: "nfs", 0xB1: "bus_id", 0xBD: "no_pxedhcp", 0xEB: "version",
}

VENDOR_PXE = b"PXEClient"
VENDOR_HTTP = b"HTTPClient"
