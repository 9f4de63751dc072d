"""Socket plumbing shared by the DHCP and TFTP services."""

from __future__ import annotations

import os
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


def udp_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for this UDP socket (full receive buffer, bad checksum):
    the "drops" column of its line in /proc/net/udp (the process's network namespace,
    readable by any user). 0 when the socket is closed or not found."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
        with open("/proc/net/udp") as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if len(fields) > 12 and fields[9] == inode:
                    return int(fields[-1])
    except (OSError, ValueError, StopIteration):
        pass
    return 0
