"""Real packet captures from ../shared/captures as test vectors, read with dpkt (an
independent decoder), and the decoded `.txt` summaries beside them."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

import dpkt

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURES = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "captures"))


def capture_names() -> list[str]:
    if not os.path.isdir(CAPTURES):
        return []
    return sorted(f[:-5] for f in os.listdir(CAPTURES) if f.endswith(".pcap"))


@dataclass
class Datagram:
    time: float            # seconds since the first packet of the capture
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def udp_datagrams(name: str, ports=(67, 68, 4011)) -> list[Datagram]:
    out = []
    with open(os.path.join(CAPTURES, name + ".pcap"), "rb") as fh:
        t0 = None
        for ts, frame in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            udp = ip.data
            if t0 is None:
                t0 = ts
            if ports and udp.sport not in ports and udp.dport not in ports:
                continue
            out.append(Datagram(ts - t0, socket.inet_ntoa(ip.src), udp.sport,
                                socket.inet_ntoa(ip.dst), udp.dport, bytes(udp.data)))
    return out


def client_requests(name: str) -> list[Datagram]:
    """Datagrams a PXE/iPXE client sent to a DHCP server or ProxyDHCP (67 or 4011)."""
    return [d for d in udp_datagrams(name) if d.dport in (67, 4011) and d.payload[:1] == b"\x01"]


@dataclass
class Summary:
    """One DHCP packet as the capture's .txt summary describes it."""
    time: float
    src: str
    dst: str
    message: str
    xid: int
    chaddr: str
    broadcast: bool
    header: dict = field(default_factory=dict)
    present: list = field(default_factory=list)
    opts: dict = field(default_factory=dict)   # code -> text after the option name


_HEAD = re.compile(r"^\s+([\d.]+)s (\S+) -> (\S+) (\w+)\s+xid=([0-9a-f]+) chaddr=(\S+)( BCAST)?$")
_OPT = re.compile(r"^\s+opt\s+(\d+) \S+\s+(.*)$")
_FIELD = re.compile(r"(\w+)=('[^']*'|\S+)")


def summaries(name: str) -> list[Summary]:
    out: list[Summary] = []
    with open(os.path.join(CAPTURES, name + ".txt")) as fh:
        section = None
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("==="):
                section = line
                continue
            if "DHCP / ProxyDHCP details" not in (section or ""):
                continue
            m = _HEAD.match(line)
            if m:
                out.append(Summary(float(m[1]), m[2], m[3], m[4], int(m[5], 16), m[6], bool(m[7])))
                continue
            if not out:
                continue
            s = line.strip()
            if s.startswith("options present:"):
                out[-1].present = [int(x) for x in s.split(":", 1)[1].split(",")]
            elif s.startswith("ciaddr="):
                out[-1].header = {k: v.strip("'") for k, v in _FIELD.findall(s)}
            else:
                m = _OPT.match(line)
                if m:
                    out[-1].opts[int(m[1])] = m[2]
    return out


@dataclass
class FlowLine:
    """One line of the capture's compact "DHCP flow" section."""
    time: float
    src: str
    dst: str
    message: str
    xid: int
    fields: dict            # key (yiaddr, siaddr, sname, file, or an option code as text) -> text


_FLOW = re.compile(r"^\s+([\d.]+)s (\S+)\s+-> (\S+)\s+(\w+)\s+([0-9a-f]{8})((?: \d*[a-z]*=(?:'[^']*'|\S+))*)"
                   r"(?: 43=(.* END))?$")   # option 43 last, as text up to its END


def flow(name: str) -> list[FlowLine]:
    """The compact flow section; raises ValueError on a line of it that does not parse."""
    out: list[FlowLine] = []
    section = None
    with open(os.path.join(CAPTURES, name + ".txt")) as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("==="):
                section = line
                continue
            if "DHCP flow" not in (section or "") or not line.strip():
                continue
            m = _FLOW.match(line)
            if not m:
                raise ValueError(f"{name}: flow line not understood: {line!r}")
            fields = {k: v.strip("'") for k, v in _FIELD.findall(m[6])}
            if m[7]:
                fields["43"] = m[7]
            out.append(FlowLine(float(m[1]), m[2], m[3], m[4], int(m[5], 16), fields))
    return out
