"""A live flood in a namespace lab: at least 100,000 random and mutated packets (the real
captures in ../shared/captures and hand-built requests mutated, random bytes, truncated,
oversize) to UDP 67 (broadcast and unicast), 4011 and 69 of a running proxydhcp, paced and
bounded in time, while scripted PXE clients (tests/dhcp_clients.py requests, as
tests/pxe_client.py sends them, with firmware-like retries) keep booting through DHCP,
4011 and TFTP.

Shown: the daemon stays up; every scripted boot succeeds; and the daemon's counters (read
from /metrics) account for the packets sent, port by port, by reason. The tolerance is what
the kernel itself may drop before the daemon reads a packet, measured, not guessed: the
port-67 packet sockets' PACKET_STATISTICS drops (proxydhcp_dhcp_socket_drops_total), the
"drops" column of /proc/net/udp for the 4011 and 69 sockets, failed IP reassemblies of
oversize datagrams and the server interface's receive drops. Counted can never exceed sent.

The helpers run in the lab's namespaces as `python -m tests.integration.test_flood
flood|boot ...`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tests.netlab import Lab, have_root, wait_for  # noqa: E402

PY = sys.executable
SERVER = "10.77.0.2"
FLOOD = {"67-broadcast": 30000, "67-unicast": 20000, "4011": 25000, "69": 25000}   # 100,000 in all
RATE = 12000            # packets per second: about 8.5 s of flood
BOOTS = 12              # scripted PXE boots during the flood (alternately BIOS and UEFI)
SO_BINDTODEVICE = 25


# --- the flooder (runs in its own namespace) ---------------------------------------------------

def _seeds():
    from proxydhcp.tftp import packet as pk
    from tests import captures
    from tests.dhcp_clients import request_bytes
    dhcp = [d.payload for n in captures.capture_names() for d in captures.udp_datagrams(n) if d.dport in (67, 4011)]
    dhcp += [request_bytes(k, mac=f"02:f1:00:00:00:0{i}") for i, k in
             enumerate(("legacy-bios", "edk2", "ipxe", "uefi-http", "plain"))]
    tftp = [d.payload for n in captures.capture_names() for d in captures.udp_datagrams(n, ports=(69,))
            if d.dport == 69]
    tftp += [pk.encode_rrq("undionly.kpxe"), pk.encode_rrq("ipxe.efi", "octet", {"tsize": 0, "blksize": 1468}),
             pk.encode_rrq("../../etc/passwd"), pk.encode_rrq("missing.bin"), pk.encode_wrq("x"),
             pk.encode_ack(1), pk.encode_data(1, b"x"), pk.encode_error(0, "x"), pk.encode_oack({"tsize": "1"})]
    return dhcp, tftp


def _packet(rng: random.Random, seeds: list) -> tuple[str, bytes]:
    kind = rng.choice(("random", "mutated", "mutated", "truncated", "oversize"))
    if kind == "random":
        return kind, rng.randbytes(rng.randrange(0, 1473))
    seed = bytearray(rng.choice(seeds))
    if kind == "truncated":
        return kind, bytes(seed[:rng.randrange(0, len(seed))])
    if kind == "oversize":           # past the MTU: sent as IP fragments
        return kind, bytes(seed) + rng.randbytes(rng.randrange(1500, 3000))
    for _ in range(rng.randrange(1, 12)):
        seed[rng.randrange(len(seed))] = rng.randrange(256)
    if rng.random() < 0.3:
        seed = seed[:rng.randrange(len(seed))] + rng.randbytes(rng.randrange(0, 64))
    return kind, bytes(seed)


def flood_main(target: str, out_path: str, seed: int) -> None:
    dhcp_seeds, tftp_seeds = _seeds()
    rng = random.Random(seed)
    dhcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dhcp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    dhcp.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"eth0")
    dhcp.bind(("0.0.0.0", 68))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("0.0.0.0", 0))
    plan = [dest for dest, n in FLOOD.items() for _ in range(n)]
    rng.shuffle(plan)
    sent = {dest: 0 for dest in FLOOD}
    kinds: dict[str, int] = {}
    errors = 0
    started = time.monotonic()
    for i, dest in enumerate(plan):
        if i % 100 == 0:                 # pace: RATE per second, bounded in time
            ahead = started + i / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        kind, data = _packet(rng, tftp_seeds if dest == "69" else dhcp_seeds)
        try:
            if dest == "67-broadcast":
                dhcp.sendto(data, ("255.255.255.255", 67))
            elif dest == "67-unicast":
                dhcp.sendto(data, (target, 67))
            else:
                other.sendto(data, (target, int(dest)))
        except OSError:
            errors += 1                  # never left this host: not counted as sent
            continue
        sent[dest] += 1
        kinds[kind] = kinds.get(kind, 0) + 1
    with open(out_path, "w") as fh:
        json.dump({"sent": sent, "kinds": kinds, "send_errors": errors,
                   "seconds": round(time.monotonic() - started, 2)}, fh)


# --- a scripted PXE client that boots (runs in the client namespace) ---------------------------

def _reply(sock, xid: int, chaddr: bytes, timeout: float):
    from proxydhcp.dhcp.packet import MalformedPacket, decode
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            return None
        data, src = sock.recvfrom(4096)
        try:
            p = decode(data)
        except MalformedPacket:
            continue
        if p.op == 2 and p.xid == xid and p.chaddr[:6] == chaddr and src[0] == SERVER:
            return p
    return None


def _tftp(name: str, sent: dict) -> bytes | None:
    """A lock-step read (blksize 1432) with firmware-like retries of the RRQ and ACKs. A
    repeated RRQ that reaches a busy server late may make it start the transfer again from a
    new port (its TID): an OACK or DATA 1 from a new TID is followed, from the start."""
    from proxydhcp.tftp import packet as pk
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    rrq = pk.encode_rrq(name, "octet", {"blksize": 1432})
    data, expect, peer, last = b"", 1, None, rrq
    for attempt in range(4):
        s.sendto(rrq, (SERVER, 69))
        sent["69"] += 1
        if select.select([s], [], [], 2.0 * 2 ** attempt)[0]:
            break
    else:
        return None
    tries = 0
    while True:
        if not select.select([s], [], [], 1.0)[0]:
            tries += 1
            if tries > 8 or peer is None:
                return None
            s.sendto(last, peer)            # resend our last ACK: the server resends its DATA
            continue
        raw, src = s.recvfrom(4096)
        p = pk.decode(raw)
        if src != peer and (isinstance(p, pk.OptionAck) or (isinstance(p, pk.Data) and p.block == 1)):
            peer, data, expect = src, b"", 1          # the transfer (re)started on this TID
        if src != peer:
            continue
        if isinstance(p, pk.OptionAck):
            last = pk.encode_ack(0)
        elif isinstance(p, pk.Data):
            if p.block == expect:
                data += p.payload
                expect += 1
            last = pk.encode_ack(p.block)
            if p.block == expect - 1 and len(p.payload) < 1432:
                s.sendto(last, peer)
                return data
        elif isinstance(p, pk.Error):
            return None
        tries = 0
        s.sendto(last, peer)


def boot_main(index: int, kind: str, expected_sha: str, out_path: str) -> None:
    from proxydhcp.dhcp import options as opt
    from tests.dhcp_clients import request_bytes
    mac = f"52:54:00:b0:{index >> 8:02x}:{index & 0xff:02x}"
    chaddr = bytes.fromhex(mac.replace(":", ""))
    sent = {"67": 0, "4011": 0, "69": 0}
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"eth0")
    s.bind(("0.0.0.0", 68))
    result = {"mac": mac, "kind": kind, "ok": False, "sent": sent}
    xid = 0x5EED0000 + index
    def ask(request: bytes, dest: tuple, port: str):
        for attempt in range(4):          # the PXE ROM retries (4, 8, 16, 32 s; 2, 4, 8, 16 here)
            s.sendto(request, dest)
            sent[port] += 1
            reply = _reply(s, xid, chaddr, 2.0 * 2 ** attempt)
            if reply:
                return reply
        return None

    offer = ask(request_bytes(kind, mac=mac, xid=xid), ("255.255.255.255", 67), "67")
    if offer is None:
        result["failed"] = "no offer"
        return _write(out_path, result)
    name = offer.file.rstrip(b"\0").decode()
    if not name:                            # UEFI: the offer sends it to 4011 for its boot file
        ack = ask(request_bytes(kind, mac=mac, xid=xid, message=opt.REQUEST, ciaddr="10.77.0.131"),
                  (SERVER, 4011), "4011")
        if ack is None:
            result["failed"] = "no ack on 4011"
            return _write(out_path, result)
        name = ack.file.rstrip(b"\0").decode()
    data = _tftp(name, sent)
    result["file"] = name
    result["ok"] = data is not None and hashlib.sha256(data).hexdigest() == expected_sha
    if not result["ok"]:
        result["failed"] = "tftp"
    _write(out_path, result)


def _write(path: str, obj) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh)


# --- the test -----------------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(not have_root(), reason="needs root and iproute2 for network namespaces")

CONFIG = """
dhcp: {interfaces: [eth0]}
boot: {firmware: {bios: undionly.kpxe, x64-uefi: ipxe.efi}}
tftp: {root: %(root)s, retransmit_timeout: 0.5, max_retries: 3, transfer_timeout: 20}
http: {port: 8080}
state: {dir: %(state)s}
run: {drop_privileges: false}
log: {level: info}
"""


def _metrics(lab: Lab, ns: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    text = lab.sh(ns, f"curl -sS --max-time 5 http://{SERVER}:8080/metrics").stdout
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(m: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in m.items() if n == name and all(dict(ls).get(k) == x for k, x in labels.items()))


def _by(m: dict, name: str, key: str, **labels) -> dict:
    out: dict = {}
    for (n, ls), v in m.items():
        d = dict(ls)
        if n == name and all(d.get(k) == x for k, x in labels.items()):
            out[d[key]] = out.get(d[key], 0) + v
    return out


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _udp_drops(lab: Lab, ns: str) -> dict:
    """The drops column of /proc/net/udp per local port, for 4011 and 69."""
    out = {"4011": 0, "69": 0}
    for line in lab.sh(ns, "cat /proc/net/udp").stdout.splitlines()[1:]:
        f = line.split()
        port = str(int(f[1].split(":")[1], 16))
        if port in out:
            out[port] += int(f[-1])
    return out


def _kernel(lab: Lab, ns: str) -> dict:
    snmp = lab.sh(ns, "cat /proc/net/snmp").stdout.splitlines()
    ip_names, ip_values = snmp[0].split()[1:], snmp[1].split()[1:]
    ip = dict(zip(ip_names, map(int, ip_values)))
    stats = json.loads(lab.sh(ns, "ip -s -j link show eth0").stdout)[0]["stats64"]["rx"]
    return {"reasm_fails": ip["ReasmFails"], "rx_dropped": stats["dropped"], **_udp_drops(lab, ns)}


def test_flood_while_scripted_clients_boot():
    from proxydhcp.tftp import packet as _pk  # noqa: F401  (fail early if the package is broken)
    from tests.conftest import record_fuzz_count, record_report
    work = tempfile.mkdtemp(prefix="proxydhcp-flood-")
    os.chmod(work, 0o755)
    root = os.path.join(work, "tftp")
    os.makedirs(root)
    files = {"undionly.kpxe": os.urandom(90_000), "ipxe.efi": os.urandom(260_000)}
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(data)
    cfg = os.path.join(work, "proxydhcp.yaml")
    with open(cfg, "w") as fh:
        fh.write(CONFIG % {"root": root, "state": os.path.join(work, "state")})
    try:
        with Lab() as lab:
            srv = lab.host("srv", f"{SERVER}/24")
            cli = lab.host("cli", "10.77.0.131/24")
            fld = lab.host("fld", "10.77.0.9/24")
            log_path = os.path.join(work, "proxydhcp.log")
            proc = lab.spawn(srv, PY, "-m", "proxydhcp", "serve", "-c", cfg, cwd=ROOT,
                             stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
            assert wait_for(lambda: "listening on eth0" in open(log_path).read() and
                            "HTTP listening" in open(log_path).read() or proc.poll() is not None, 20)
            assert proc.poll() is None, open(log_path).read()
            before, kbefore = _metrics(lab, cli), _kernel(lab, srv)

            flood_out = os.path.join(work, "flood.json")
            flooder = lab.spawn(fld, PY, "-m", "tests.integration.test_flood", "flood", SERVER, flood_out, "9",
                                cwd=ROOT)
            boots, client_sent = [], {"67": 0, "4011": 0, "69": 0}
            time.sleep(0.5)                          # the flood is under way
            for i in range(BOOTS):
                kind = "legacy-bios" if i % 2 == 0 else "edk2"
                sha = hashlib.sha256(files["undionly.kpxe" if kind == "legacy-bios" else "ipxe.efi"]).hexdigest()
                out = os.path.join(work, f"boot{i}.json")
                lab.sh(cli, f"cd {ROOT} && timeout 120 {PY} -m tests.integration.test_flood boot {i} {kind} {sha} {out}",
                       check=False)
                boots.append(json.load(open(out)) if os.path.exists(out) else {"ok": False, "failed": "crashed"})
                for port, n in boots[-1].get("sent", {}).items():
                    client_sent[port] += n
            flooder.wait(timeout=120)
            assert flooder.returncode == 0, Lab.output(flooder)
            flood = json.load(open(flood_out))

            def settled():            # counters stop moving and every transfer has ended
                a = _metrics(lab, cli)
                time.sleep(0.5)
                b = _metrics(lab, cli)
                return _sum(b, "proxydhcp_tftp_active_transfers") == 0 and \
                    _sum(a, "proxydhcp_dhcp_packets_total") == _sum(b, "proxydhcp_dhcp_packets_total") and \
                    _sum(a, "proxydhcp_tftp_packets_dropped_total") == _sum(b, "proxydhcp_tftp_packets_dropped_total")
            assert wait_for(settled, 40, 0.2)
            after, kafter = _metrics(lab, cli), _kernel(lab, srv)
            assert proc.poll() is None, "the daemon died:\n" + open(log_path).read()[-3000:]
            assert lab.sh(cli, f"curl -sS --max-time 5 http://{SERVER}:8080/healthz").stdout == "ok\n"
            assert "Traceback" not in open(log_path).read()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    d = _delta(after, before)
    kd = {k: kafter[k] - kbefore[k] for k in kafter}
    sent = flood["sent"]
    total = sum(sent.values())
    record_fuzz_count("tests/integration/test_flood.py::test_flood_while_scripted_clients_boot (packets)", total)
    dhcp67 = _by(d, "proxydhcp_dhcp_packets_total", "result", port="67")
    dhcp4011 = _by(d, "proxydhcp_dhcp_packets_total", "result", port="4011")
    tftp_drops = _by(d, "proxydhcp_tftp_packets_dropped_total", "reason", port="request")
    tftp_transfer_drops = _by(d, "proxydhcp_tftp_packets_dropped_total", "reason", port="transfer")
    tftp_outcomes = _by(d, "proxydhcp_tftp_transfers_total", "outcome")
    socket_drops67 = _sum(d, "proxydhcp_dhcp_socket_drops_total")
    expected = {"67": sent["67-broadcast"] + sent["67-unicast"] + client_sent["67"],
                "4011": sent["4011"] + client_sent["4011"], "69": sent["69"] + client_sent["69"]}
    counted = {"67": sum(dhcp67.values()), "4011": sum(dhcp4011.values()),
               "69": sum(tftp_drops.values()) + sum(tftp_outcomes.values())}
    kernel = {"67": socket_drops67, "4011": kd["4011"], "69": kd["69"]}
    shared = kd["rx_dropped"] + kd["reasm_fails"]       # not attributable to one port
    lines = []
    print = lines.append          # noqa: A001  (the summary lines go to the terminal summary too)
    print(f"flood: {total} packets sent in {flood['seconds']} s ({flood['send_errors']} send errors), "
          f"by destination {sent}, by kind {flood['kinds']}")
    print(f"scripted boots: {sum(b['ok'] for b in boots)}/{len(boots)} succeeded; their packets {client_sent}; "
          f"retries: {[{k: v for k, v in b.get('sent', {}).items() if v > 1} for b in boots]}")
    print(f"UDP 67 by result: {dict(sorted(dhcp67.items()))}")
    print(f"UDP 4011 by result: {dict(sorted(dhcp4011.items()))}")
    print(f"UDP 69 dropped by reason: {dict(sorted(tftp_drops.items()))}; transfers by outcome: "
          f"{dict(sorted(tftp_outcomes.items()))}; dropped on transfer ports: {dict(sorted(tftp_transfer_drops.items()))}")
    print(f"accounting per port (sent incl. scripted clients / counted by the daemon / dropped by the kernel): "
          + ", ".join(f"{p}: {expected[p]}/{counted[p]:.0f}/{kernel[p]:.0f}" for p in expected)
          + f"; interface rx drops {kd['rx_dropped']}, failed reassemblies {kd['reasm_fails']}")
    for line in lines:
        record_report(line)
        sys.stdout.write(line + "\n")

    assert [b for b in boots if not b["ok"]] == []
    assert total >= 100_000 and flood["send_errors"] == 0
    for p in expected:
        assert counted[p] <= expected[p], (p, counted[p], expected[p])           # never counted twice
        assert expected[p] - counted[p] <= kernel[p] + shared, (p, expected[p], counted[p], kernel[p], shared)
    # the daemon's own metric for the UDP sockets' kernel drops says what /proc/net/udp says
    udp_metric = _by(d, "proxydhcp_udp_socket_drops_total", "port")
    assert {p: udp_metric.get(p, 0) for p in ("4011", "69")} == {"4011": kd["4011"], "69": kd["69"]}


if __name__ == "__main__":
    if sys.argv[1] == "flood":
        flood_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1] == "boot":
        boot_main(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
