"""A scripted PXE client for integration tests: sends one request shaped like real
firmware (tests/dhcp_clients.py) and prints every datagram it receives, as JSON lines.

usage: python -m tests.pxe_client KIND --iface eth0 [--mac M] [--message discover|request]
       [--to ADDR] [--port 67|4011] [--sport N] [--ciaddr A] [--giaddr A] [--wait S]
"""

import argparse
import json
import select
import socket
import sys
import time

sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])

from proxydhcp.dhcp import options as opt  # noqa: E402
from tests.dhcp_clients import request_bytes  # noqa: E402

SO_BINDTODEVICE = 25


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("kind")
    p.add_argument("--iface", default="eth0")
    p.add_argument("--mac", default="52:54:00:77:00:02")
    p.add_argument("--message", default="discover")
    p.add_argument("--arch", type=int)
    p.add_argument("--to", default="255.255.255.255")
    p.add_argument("--port", type=int, default=67)
    p.add_argument("--sport", type=int, default=68)
    p.add_argument("--ciaddr", default="0.0.0.0")
    p.add_argument("--giaddr", default="0.0.0.0")
    p.add_argument("--xid", type=lambda s: int(s, 0), default=0x1234ABCD)
    p.add_argument("--wait", type=float, default=2.0)
    a = p.parse_args()
    message = {"discover": opt.DISCOVER, "request": opt.REQUEST, "inform": opt.INFORM}[a.message]
    data = request_bytes(a.kind, mac=a.mac, message=message, arch=a.arch, xid=a.xid,
                         ciaddr=a.ciaddr, giaddr=a.giaddr)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, a.iface.encode())
    s.bind(("0.0.0.0", a.sport))
    s.sendto(data, (a.to, a.port))
    deadline = time.monotonic() + a.wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not select.select([s], [], [], left)[0]:
            break
        payload, src = s.recvfrom(4096)
        print(json.dumps({"src": src[0], "sport": src[1], "hex": payload.hex(),
                          "t": round(a.wait - left, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
