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
