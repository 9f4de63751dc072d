"""Receive buffers: root gets the size it asks for even past net.core.rmem_max."""

import os
import socket

from proxydhcp.net import receive_buffer


def _rmem_max() -> int:
    with open("/proc/sys/net/core/rmem_max") as fh:
        return int(fh.read())


def test_root_forces_the_size_past_rmem_max_and_others_get_the_cap():
    size = _rmem_max() + (1 << 20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        got = receive_buffer(sock, size)
    if os.geteuid() == 0:
        assert got == 2 * size          # the kernel doubles what it is asked for
    else:
        assert got == 2 * _rmem_max()


def test_udp_drops_reads_the_kernels_count_for_this_socket():
    from proxydhcp import metrics
    from proxydhcp.net import udp_drops
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)     # the kernel's minimum
        rx.bind(("127.0.0.1", 0))
        assert udp_drops(rx) == 0
        for _ in range(200):                                          # never read: most are dropped
            tx.sendto(b"x" * 1000, rx.getsockname())
        dropped = udp_drops(rx)
        assert 150 <= dropped <= 200
        metrics.UDP_SOCKET_DROPS.sources[("test",)] = lambda: udp_drops(rx)
        try:
            assert metrics.REGISTRY.get_sample_value("proxydhcp_udp_socket_drops_total", {"port": "test"}) == dropped
        finally:
            del metrics.UDP_SOCKET_DROPS.sources[("test",)]
    assert udp_drops(rx) == 0                                         # closed: nothing to read
