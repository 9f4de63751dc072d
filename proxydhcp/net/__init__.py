"""Socket plumbing shared by the DHCP and TFTP services."""

from __future__ import annotations

import socket

SO_RCVBUFFORCE = 33   # Linux: as SO_RCVBUF, past net.core.rmem_max (needs CAP_NET_ADMIN: root at start)


def receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a `size`-byte receive buffer, so that a burst (a rack powering on) waits in the
    kernel instead of being dropped. SO_RCVBUF alone is capped at net.core.rmem_max (208 KiB
    on a stock Debian: ~400 DHCP requests), so root forces it; returns what the kernel gave
    (it doubles the request for its bookkeeping)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
