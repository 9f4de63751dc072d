"""The TFTP benchmark's storm client (bench/tftp_storm.c) is an instrument: it must fetch
whole files, in both styles, and count every transfer whose bytes differ from the file as a
failure. Built here with cc and run against proxydhcp's TFTP on loopback."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.integration.test_tftp_clients import HOST, ROOT, Server

SIZE = 300_000          # 210 blocks of 1432, the last one short
SOURCES = ",".join(f"127.0.0.{i}" for i in range(1, 7))   # as from several machines (per-client limit)


@pytest.fixture(scope="module")
def storm_client(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cc") / "tftp_storm")
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", out, os.path.join(ROOT, "bench", "tftp_storm.c")],
                   check=True)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("storm")
    root = work / "root"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "ipxe.efi").write_bytes(data)
    srv = Server(str(work), str(root))
    yield srv, root, data
    srv.stop()


def _storm(exe, srv, style, expected, n=12, concurrency=5, name="ipxe.efi"):
    out = subprocess.run([exe, f"{HOST}:{srv.port}", name, str(n), str(concurrency), style, SOURCES,
                          str(expected)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize("style", ["ipxe", "edk2"])
def test_whole_files_in_both_styles(storm_client, served, style):
    srv, root, _data = served
    r = _storm(storm_client, srv, style, root / "ipxe.efi")
    assert (r["ok"], r["done"], r["failures"], r["failure_reasons"]) == (True, 12, 0, [])
    assert r["bytes"] == 12 * SIZE
    assert 0 < r["p50"] <= r["p95"] <= r["seconds"]
    if style == "edk2":    # each boot was a probe then a transfer: the server saw both
        evs = srv.wait_events(12, outcome="probe")
        assert all(e["size"] == SIZE for e in evs)


def test_a_byte_that_differs_fails_the_transfer(storm_client, served, tmp_path):
    srv, _root, data = served
    wrong = bytearray(data)
    wrong[SIZE // 2] ^= 0x01                 # one bit, in the middle of a block
    (tmp_path / "expected").write_bytes(bytes(wrong))
    r = _storm(storm_client, srv, "ipxe", tmp_path / "expected", n=4, concurrency=2)
    assert (r["ok"], r["done"], r["failures"]) == (False, 0, 4)
    assert r["failure_reasons"] == [f"wrong bytes ({SIZE} bytes)"]


def test_a_shorter_file_than_expected_fails(storm_client, served, tmp_path):
    srv, _root, data = served
    (tmp_path / "expected").write_bytes(data + b"x")
    r = _storm(storm_client, srv, "ipxe", tmp_path / "expected", n=2, concurrency=2)
    assert (r["ok"], r["failures"], r["failure_reasons"]) == (False, 2, [f"wrong bytes ({SIZE} bytes)"])


def test_a_missing_file_is_reported_with_the_servers_words(storm_client, served):
    srv, root, _data = served
    r = _storm(storm_client, srv, "ipxe", root / "ipxe.efi", n=2, concurrency=2, name="nope.efi")
    assert (r["ok"], r["failures"]) == (False, 2)
    assert r["failure_reasons"] == ["file not found: nope.efi"]
