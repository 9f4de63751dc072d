"""Who may be answered, and how often. Pure: no clock of its own, no I/O.

- AccessRules: allow/deny lists by MAC pattern (full MAC, OUI "aa:bb:cc", wildcards
  "52:54:00:*") and by client subnet. Deny wins; a non-empty allow list admits only its
  members.
- TokenBuckets: per-key rate limits (per MAC, per source address) with a bounded table, so
  one machine stuck in a boot loop, or a flood from one address, cannot starve the others.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections import OrderedDict


def mac_pattern(text: str) -> str:
    """Normalise a MAC pattern; a prefix such as an OUI ("aa:bb:cc") matches the whole block."""
    p = text.strip().lower().replace("-", ":")
    if p.count(":") < 5 and "*" not in p:
        p += ":*"
    return p


class AccessRules:
    def __init__(self, allow_macs=(), deny_macs=(), allow_subnets=(), deny_subnets=()) -> None:
        self.allow_macs = [mac_pattern(p) for p in allow_macs]
        self.deny_macs = [mac_pattern(p) for p in deny_macs]
        self.allow_subnets = [ipaddress.IPv4Network(s, strict=False) for s in allow_subnets]
        self.deny_subnets = [ipaddress.IPv4Network(s, strict=False) for s in deny_subnets]

    @property
    def empty(self) -> bool:
        return not (self.allow_macs or self.deny_macs or self.allow_subnets or self.deny_subnets)

    def refuse(self, mac: str, client_net_address: str | None) -> str | None:
        """Why this client must not be answered, or None. client_net_address is an address
        on the client's subnet (its ciaddr, the relay's giaddr, or our interface address)."""
        for p in self.deny_macs:
            if fnmatch.fnmatchcase(mac, p):
                return f"MAC {mac} matches deny {p}"
        if self.allow_macs and not any(fnmatch.fnmatchcase(mac, p) for p in self.allow_macs):
            return f"MAC {mac} is not in the allow list"
        if client_net_address and (self.deny_subnets or self.allow_subnets):
            addr = ipaddress.IPv4Address(client_net_address)
            for net in self.deny_subnets:
                if addr in net:
                    return f"subnet {net} is denied"
            if self.allow_subnets and not any(addr in net for net in self.allow_subnets):
                return f"{addr} is outside the allowed subnets"
        return None


class TokenBuckets:
    """rate tokens per second, burst at most; at most `size` keys remembered (LRU)."""

    def __init__(self, rate: float, burst: float, size: int = 65536) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self._buckets: OrderedDict[object, list] = OrderedDict()

    def allow(self, key, now: float) -> bool:
        if self.rate <= 0:
            return True
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.size:
                self._buckets.popitem(last=False)
            b = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False


class InProgress:
    """Machines mid-boot, for the cap on sessions in progress (dhcp.max_sessions_in_progress).

    A machine is in progress from our first reply until it finishes (release(), when its
    iPXE fetched the boot script) or until `hold` seconds pass without a reply to it. A
    machine in progress is always admitted again (a boot is never cut off halfway); a new
    one only while fewer than `cap` are in progress and fewer than `per_source` came through
    the same sender, so a flood of invented MACs from one address cannot fill the table.
    0 means no cap. Entries expire oldest first: O(1) per admission."""

    def __init__(self, cap: int, per_source: int, hold: float) -> None:
        self.cap, self.per_source, self.hold = cap, per_source, hold
        self._macs: OrderedDict[str, list] = OrderedDict()   # mac -> [deadline, source]
        self._sources: dict[object, int] = {}

    def __len__(self) -> int:
        return len(self._macs)

    def __contains__(self, mac: str) -> bool:
        return mac in self._macs

    def count(self, now: float) -> int:
        self._expire(now)
        return len(self._macs)

    def admit(self, mac: str, source, now: float) -> bool:
        """True (and the machine is in progress until now + hold) or False: busy."""
        entry = self._macs.get(mac)
        if entry is not None:
            entry[0] = now + self.hold
            self._macs.move_to_end(mac)
            return True
        self._expire(now)
        if self.cap and len(self._macs) >= self.cap:
            return False
        if self.per_source and self._sources.get(source, 0) >= self.per_source:
            return False
        self._macs[mac] = [now + self.hold, source]
        self._sources[source] = self._sources.get(source, 0) + 1
        return True

    def release(self, mac: str) -> None:
        entry = self._macs.pop(mac, None)
        if entry is not None:
            self._drop_source(entry[1])

    def _drop_source(self, source) -> None:
        left = self._sources[source] - 1
        if left:
            self._sources[source] = left
        else:
            del self._sources[source]

    def _expire(self, now: float) -> None:
        macs = self._macs
        while macs:
            mac, entry = next(iter(macs.items()))
            if entry[0] > now:
                return
            del macs[mac]
            self._drop_source(entry[1])
