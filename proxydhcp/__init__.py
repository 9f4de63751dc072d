"""proxydhcp: ProxyDHCP, TFTP and HTTP network boot beside an untouched DHCP server."""

__version__ = "0.1.0"
