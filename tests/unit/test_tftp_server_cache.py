"""The TFTP service reads a file from disk once for any number of transfers (a storm does
not read the disk per transfer, nor per block), and reads it again once it changes: the
next transfer carries the new bytes, while one already running keeps the bytes it began
with. Through TFTPService._on_request with a reactor that is never run; the first DATA of
each transfer goes over loopback to the test's own client socket."""

from __future__ import annotations

import os
import socket

import pytest

from proxydhcp import config
from proxydhcp.events import EventBus
from proxydhcp.tftp import packet as pk
from proxydhcp.tftp import server as tftp_server
from tests.fake_reactor import FakeReactor


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ipxe.efi").write_bytes(b"A" * 3000)
    cfg = config.parse(f"tftp: {{root: {root}, port: 0, max_transfers_per_client: 100}}\n"
                       f"boot: {{firmware: {{x64-uefi: ipxe.efi}}}}\nstate: {{dir: {tmp_path}/state}}")
    svc = tftp_server.TFTPService(config.LiveConfig(cfg), EventBus(), address="127.0.0.1", reactor=FakeReactor())
    svc.startService()
    socks = []

    def rrq(name="ipxe.efi"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        socks.append(s)
        svc._on_request(pk.encode_rrq(name), s.getsockname(), "127.0.0.1", 0)
        return pk.decode(s.recvfrom(2048)[0])

    yield svc, root, rrq
    svc.stopService()
    for s in socks:
        s.close()


def test_many_transfers_one_read_and_a_change_read_again(setup):
    svc, root, rrq = setup
    for _ in range(30):
        assert rrq() == pk.Data(1, b"A" * 512)
    assert len(svc.sessions) == 30 and svc.cache.reads == 1
    running = next(iter(svc.sessions.values())).transfer

    (root / "ipxe.efi").write_bytes(b"B" * 2000)         # the operator installs a new build
    assert rrq() == pk.Data(1, b"B" * 512)
    assert svc.cache.reads == 2
    assert running.size == 3000 and bytes(running.blocks.view) == b"A" * 3000   # unchanged mid-transfer
    for _ in range(5):
        assert rrq() == pk.Data(1, b"B" * 512)
    assert svc.cache.reads == 2

    # replaced by a new file of the same size and mtime (another inode): read again too
    st = os.stat(root / "ipxe.efi")
    (root / "new").write_bytes(b"C" * 2000)
    os.utime(root / "new", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(root / "new", root / "ipxe.efi")
    assert rrq() == pk.Data(1, b"C" * 512)
    assert svc.cache.reads == 3
