"""Groups: which machines get which profile.

A group names a profile and selectors; a machine matches a group when it matches every
selector (a selector with a list matches any of its values). Among the matching groups the
most specific wins:

  1. more selectors beat fewer (a group without selectors is the default);
  2. with as many selectors, the group with more selectors naming single machines
     (an exact MAC without wildcards, or a UUID) wins;
  3. two groups still equal that one machine could match both are a ConfigError at load,
     naming both groups, so a winner is never picked by accident of order.

Selectors: mac (wildcards `*` `?`), uuid, arch (option-93 code or name from the arch table),
firmware (legacy-pxe, ipxe, uefi-http), interface (wildcards), subnet (CIDR of the client's
address), vendor_class and user_class (wildcards).

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from itertools import combinations

from proxydhcp import arch as archtable
from proxydhcp.client import FIRMWARE_KINDS
from proxydhcp.config import ConfigError
from proxydhcp.policy import globs

SELECTORS = ("mac", "uuid", "arch", "firmware", "interface", "subnet", "vendor_class", "user_class")
IDENTITY_SELECTORS = ("mac", "uuid")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass
class Machine:
    """What is known of a machine when it asks for its script: the URL's query and peer
    address, completed by the last DHCP reply the ProxyDHCP sent it."""
    mac: str
    ip: str | None = None
    uuid: str | None = None
    arch: int | None = None
    firmware: str | None = None
    interface: str | None = None
    vendor_class: str | None = None
    user_classes: tuple = ()
    hostname: str | None = None


@dataclass
class Group:
    name: str
    profile: str
    selectors: dict = field(default_factory=dict)  # key -> list of normalised values
    metadata: dict = field(default_factory=dict)
    index: int = 0

    @property
    def specificity(self) -> tuple[int, int]:
        exact = sum(1 for k in IDENTITY_SELECTORS
                    if k in self.selectors and not any(globs.has_wildcard(v) for v in self.selectors[k]))
        return len(self.selectors), exact

    def describe(self) -> str:
        if not self.selectors:
            return "no selectors (default)"
        return ", ".join(f"{k} {_show(k, v)}" for k, v in self.selectors.items())


def _show(key: str, values: list) -> str:
    text = [archtable.label(v) + f" ({v})" if key == "arch" else str(v) for v in values]
    return text[0] if len(text) == 1 else "any of " + ", ".join(text)


def _fail(where: str, msg: str):
    raise ConfigError(f"{where}: {msg}")


def normalise_mac(value) -> str | None:
    """'52-54-00-AB-CD-EF' / '5254.00ab.cdef' / '525400abcdef' -> '52:54:00:ab:cd:ef'; None if not a MAC."""
    text = re.sub(r"[^0-9a-f]", "", str(value).lower()) if re.fullmatch(r"[0-9A-Fa-f:.\-]{12,17}", str(value)) else ""
    if len(text) != 12:
        return None
    return ":".join(text[i:i + 2] for i in range(0, 12, 2))


def normalise_uuid(value) -> str | None:
    text = str(value).strip().lower().strip("{}")
    return text if _UUID.match(text) else None


def _values(key: str, raw, where: str) -> list:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        _fail(where, "an empty list matches nothing; remove the selector or give values")
    out = []
    for v in values:
        if isinstance(v, (dict, list)) or v is None:
            _fail(where, f"expected a value, got {v!r}")
        if key == "mac":
            n = globs.normalise_mac_pattern(v)
            if n is None:
                _fail(where, f"{v!r} is not a MAC or MAC pattern (like 52:54:00:12:34:56 or 52:54:00:*)")
        elif key == "uuid":
            n = normalise_uuid(v)
            if n is None:
                _fail(where, f"{v!r} is not a UUID (like 6e65746c-6162-4000-8000-000000000001)")
        elif key == "arch":
            if isinstance(v, int) and not isinstance(v, bool) and v in archtable.BY_CODE:
                n = v
            elif isinstance(v, str) and v in archtable.BY_NAME:
                n = archtable.BY_NAME[v].code
            else:
                _fail(where, f"{v!r} is not an arch code or name (see `proxydhcp arches`)")
        elif key == "firmware":
            if v not in FIRMWARE_KINDS:
                _fail(where, f"{v!r}: one of {', '.join(FIRMWARE_KINDS)}")
            n = v
        elif key == "subnet":
            try:
                n = ipaddress.IPv4Network(str(v), strict=False)
            except ValueError as exc:
                _fail(where, f"{v!r} is not an IPv4 subnet like 10.0.0.0/24 ({exc})")
        else:
            n = str(v)
            if not n:
                _fail(where, "an empty string matches nothing")
        if n not in out:
            out.append(n)
    return out


def parse(i: int, raw, profile_names: set, builtin_vars: tuple, may_set: tuple) -> Group:
    where = f"groups[{i}]"
    if not isinstance(raw, dict):
        _fail(where, "expected a mapping with name, profile, and optionally selectors and metadata")
    extra = set(raw) - {"name", "profile", "selectors", "metadata"}
    if extra:
        _fail(where, f"unknown key(s) {', '.join(sorted(map(str, extra)))}; allowed: name, profile, selectors, metadata")
    name = raw.get("name", f"group{i}")
    if not isinstance(name, str) or not name.strip():
        _fail(where + ".name", "a non-empty string")
    where = f"groups[{i}] ({name})"
    profile = raw.get("profile")
    if profile not in profile_names:
        _fail(where + ".profile", f"{profile!r} is not defined in profiles")
    sel = raw.get("selectors") or {}
    if not isinstance(sel, dict):
        _fail(where + ".selectors", "expected a mapping of selector -> value or list of values")
    bad = set(sel) - set(SELECTORS)
    if bad:
        _fail(where + ".selectors", f"unknown selector(s) {', '.join(sorted(map(str, bad)))}; "
                                    f"known: {', '.join(SELECTORS)}")
    selectors = {k: _values(k, sel[k], f"{where}.selectors.{k}") for k in SELECTORS if k in sel}
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        _fail(where + ".metadata", "expected a mapping of name -> value")
    clean = {}
    for k, v in meta.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            _fail(where + ".metadata", f"{k!r}: names are letters, digits and '_' (used as {{{{ name }}}})")
        if k in builtin_vars and k not in may_set:
            _fail(f"{where}.metadata.{k}", f"{k!r} is a built-in template variable; choose another name")
        if isinstance(v, (dict, list)) or v is None:
            _fail(f"{where}.metadata.{k}", "expected a string or number")
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if "\n" in text or "\r" in text:
            _fail(f"{where}.metadata.{k}", "must be one line (it is pasted into an iPXE script)")
        clean[k] = text
    return Group(name, profile, selectors, clean, i)


# --- matching -------------------------------------------------------------------------------

def selector_matches(key: str, values: list, m: Machine) -> str | None:
    """The value of the machine that matched (for explanations), or None."""
    if key == "mac":
        return next((m.mac for v in values if globs.matches(v, m.mac)), None)
    if key == "uuid":
        return m.uuid if m.uuid and m.uuid.lower() in values else None
    if key == "arch":
        return str(m.arch) if m.arch in values else None
    if key == "firmware":
        return m.firmware if m.firmware in values else None
    if key == "interface":
        return next((m.interface for v in values if m.interface and globs.matches(v, m.interface)), None)
    if key == "subnet":
        if not m.ip:
            return None
        try:
            ip = ipaddress.IPv4Address(m.ip)
        except ValueError:
            return None
        return m.ip if any(ip in net for net in values) else None
    if key == "vendor_class":
        return next((m.vendor_class for v in values if m.vendor_class and globs.matches(v, m.vendor_class)), None)
    if key == "user_class":
        return next((uc for v in values for uc in m.user_classes if globs.matches(v, uc)), None)
    return None


def matches(g: Group, m: Machine, ignore=frozenset()) -> bool:
    """Whether the machine matches every selector of the group, those named in `ignore` aside."""
    return all(key in ignore or selector_matches(key, values, m) is not None
               for key, values in g.selectors.items())


def why_matches(g: Group, m: Machine) -> list[str] | None:
    """One line per selector saying how the machine matched, or None if it does not."""
    out = []
    for key, values in g.selectors.items():
        hit = selector_matches(key, values, m)
        if hit is None:
            return None
        out.append(f"{key} {hit} matches {_show(key, values)}")
    return out


def missing(g: Group, m: Machine) -> str:
    """The first selector a machine fails, said plainly (for explain)."""
    for key, values in g.selectors.items():
        if selector_matches(key, values, m) is None:
            have = {"mac": m.mac, "uuid": m.uuid, "arch": m.arch, "firmware": m.firmware,
                    "interface": m.interface, "subnet": m.ip, "vendor_class": m.vendor_class,
                    "user_class": ",".join(m.user_classes) or None}[key]
            return f"{key} {have if have is not None else '(unknown)'} does not match {_show(key, values)}"
    return "matches"


# --- ties at load ---------------------------------------------------------------------------

def _values_overlap(key: str, a: list, b: list) -> bool:
    if key == "mac":
        return any(globs.overlap(x, y, globs.MAC_POSITIONS) for x in a for y in b)
    if key in ("interface", "vendor_class", "user_class"):
        return any(globs.overlap(x, y) for x in a for y in b)
    if key == "subnet":
        return any(x.overlaps(y) for x in a for y in b)
    return bool(set(a) & set(b))  # uuid, arch, firmware


def could_overlap(a: Group, b: Group) -> bool:
    """Could one machine match both groups? A selector only one group has constrains nothing
    the other says, so only shared selectors can keep them apart."""
    return all(_values_overlap(k, a.selectors[k], b.selectors[k]) for k in a.selectors if k in b.selectors)


def check_ties(groups: list[Group]) -> None:
    by_rank: dict[tuple, list[Group]] = {}
    for g in groups:
        by_rank.setdefault(g.specificity, []).append(g)
    for rank, same in by_rank.items():
        for a, b in _candidate_pairs(same):
            if could_overlap(a, b):
                n = rank[0]
                raise ConfigError(
                    f"groups {a.name!r} ({a.describe()}) and {b.name!r} ({b.describe()}) are equally specific "
                    f"({n} selector{'s' if n != 1 else ''} each) and one machine could match both, so which "
                    f"one wins would be arbitrary: add a selector to the one that should win, or narrow one "
                    f"so they cannot overlap")


def _candidate_pairs(same: list[Group]):
    """Pairs worth checking. Groups keyed by exact MACs (the common large case: one group
    per machine) only need checking against groups sharing a MAC or without exact MACs."""
    exact, rest = {}, []
    for g in same:
        macs = g.selectors.get("mac")
        if macs and not any(globs.has_wildcard(v) for v in macs):
            exact[g.index] = g
        else:
            rest.append(g)
    yield from combinations(rest, 2)
    for g in exact.values():
        for r in rest:
            yield g, r
    by_mac: dict[str, list[Group]] = {}
    for g in exact.values():
        for mac in g.selectors["mac"]:
            by_mac.setdefault(mac, []).append(g)
    seen = set()
    for sharing in by_mac.values():
        for a, b in combinations(sharing, 2):
            if (a.index, b.index) not in seen:
                seen.add((a.index, b.index))
                yield a, b
