"""Boot policy: profiles (what to boot) and groups (which machines get which profile).

Plain data validated at load (a ConfigError names the key), then pure functions:
`Policy.match(machine)` picks the most specific group, `render(profile, vars)` writes the
iPXE script. Template variables use `{{ name }}`, which iPXE never uses, so iPXE's own
`${...}` passes through untouched.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field

from proxydhcp import arch as archtable
from proxydhcp.client import FIRMWARE_KINDS
from proxydhcp.config import ConfigError

PROFILE_KINDS = ("script", "kernel", "chain", "sanboot", "menu", "exit")
SELECTORS = ("mac", "uuid", "arch", "firmware", "interface", "subnet", "vendor_class", "user_class")
_VAR = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


@dataclass
class Machine:
    """What we know of a machine when it asks for its script."""
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
    selectors: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def specificity(self) -> int:
        return len(self.selectors)


@dataclass
class Decision:
    group: Group | None
    profile: str
    why: list


def _fail(where: str, msg: str):
    raise ConfigError(f"{where}: {msg}")


def _arch_code(value, where: str) -> int:
    if isinstance(value, int) and value in archtable.BY_CODE:
        return value
    if isinstance(value, str) and value in archtable.BY_NAME:
        return archtable.BY_NAME[value].code
    _fail(where, f"{value!r} is not an arch code or name (see `proxydhcp arches`)")


def _check_profile(name: str, p, names: set) -> dict:
    where = f"profiles.{name}"
    if not isinstance(p, dict):
        _fail(where, "expected a mapping")
    kinds = [k for k in PROFILE_KINDS if k in p]
    if len(kinds) != 1:
        _fail(where, f"needs exactly one of {', '.join(PROFILE_KINDS)} (got {', '.join(kinds) or 'none'})")
    allowed = {"script": {"script"}, "kernel": {"kernel", "initrd", "cmdline"}, "chain": {"chain"},
               "sanboot": {"sanboot"}, "menu": {"menu"}, "exit": {"exit"}}[kinds[0]] | {"description"}
    extra = set(p) - allowed
    if extra:
        _fail(where, f"unknown key(s) {sorted(extra)} for a {kinds[0]} profile")
    if kinds[0] == "menu":
        m = p["menu"]
        if not isinstance(m, dict) or not isinstance(m.get("items"), list) or not m["items"]:
            _fail(where + ".menu", "needs items: a list of profile names")
        for item in m["items"]:
            if item not in names:
                _fail(where + ".menu.items", f"{item!r} is not a profile")
            if item == name:
                _fail(where + ".menu.items", "a menu cannot contain itself")
        if m.get("default") is not None and m["default"] not in m["items"]:
            _fail(where + ".menu.default", f"{m['default']!r} is not one of the items")
        if not isinstance(m.get("timeout", 0), int) or m.get("timeout", 0) < 0:
            _fail(where + ".menu.timeout", "seconds, a non-negative integer")
    elif kinds[0] == "kernel":
        if not isinstance(p["kernel"], str):
            _fail(where + ".kernel", "a URL or a path under http.root")
        initrd = p.get("initrd", [])
        if isinstance(initrd, str):
            initrd = [initrd]
        if not isinstance(initrd, list):
            _fail(where + ".initrd", "a URL or a list of URLs")
        p = dict(p, initrd=initrd)
    elif kinds[0] != "exit" and not isinstance(p[kinds[0]], str):
        _fail(where + "." + kinds[0], "expected a string")
    return p


def _check_group(i: int, g, profiles: dict) -> Group:
    where = f"groups[{i}]"
    if not isinstance(g, dict):
        _fail(where, "expected a mapping with name, profile and selectors")
    extra = set(g) - {"name", "profile", "selectors", "metadata"}
    if extra:
        _fail(where, f"unknown key(s) {sorted(extra)}")
    name = g.get("name") or f"group{i}"
    if g.get("profile") not in profiles:
        _fail(where, f"profile {g.get('profile')!r} is not defined in profiles")
    sel = g.get("selectors") or {}
    if not isinstance(sel, dict):
        _fail(where + ".selectors", "expected a mapping")
    bad = set(sel) - set(SELECTORS)
    if bad:
        _fail(where + ".selectors", f"unknown selector(s) {sorted(bad)}; known: {', '.join(SELECTORS)}")
    out = {}
    for key, value in sel.items():
        values = value if isinstance(value, list) else [value]
        if key == "arch":
            values = [_arch_code(v, f"{where}.selectors.arch") for v in values]
        elif key == "firmware":
            for v in values:
                if v not in FIRMWARE_KINDS:
                    _fail(f"{where}.selectors.firmware", f"{v!r}: one of {', '.join(FIRMWARE_KINDS)}")
        elif key == "subnet":
            try:
                values = [ipaddress.IPv4Network(str(v), strict=False) for v in values]
            except ValueError as exc:
                _fail(f"{where}.selectors.subnet", str(exc))
        elif key == "mac":
            values = [str(v).lower().replace("-", ":") for v in values]
        else:
            values = [str(v) for v in values]
        out[key] = values
    meta = g.get("metadata") or {}
    if not isinstance(meta, dict):
        _fail(where + ".metadata", "expected a mapping")
    return Group(str(name), g["profile"], out, meta)


class Policy:
    def __init__(self, profiles: dict, groups: list) -> None:
        names = set(profiles)
        self.profiles = {n: _check_profile(n, p, names) for n, p in profiles.items()}
        self.groups = [_check_group(i, g, self.profiles) for i, g in enumerate(groups)]
        seen: dict = {}
        for g in self.groups:
            key = tuple(sorted((k, tuple(map(str, v))) for k, v in g.selectors.items()))
            if key in seen:
                raise ConfigError(f"groups {seen[key]!r} and {g.name!r} have the same selectors: "
                                  f"which one wins would be arbitrary; merge them or make one more specific")
            seen[key] = g.name
        self.default_builtin = not self.profiles

    @staticmethod
    def _selector_matches(key: str, values: list, m: Machine) -> bool:
        if key == "mac":
            return any(fnmatch.fnmatchcase(m.mac, v) for v in values)
        if key == "uuid":
            return m.uuid is not None and m.uuid.lower() in (v.lower() for v in values)
        if key == "arch":
            return m.arch in values
        if key == "firmware":
            return m.firmware in values
        if key == "interface":
            return m.interface in values
        if key == "subnet":
            return m.ip is not None and any(ipaddress.IPv4Address(m.ip) in net for net in values)
        if key == "vendor_class":
            return m.vendor_class is not None and any(fnmatch.fnmatchcase(m.vendor_class, v) for v in values)
        if key == "user_class":
            return any(fnmatch.fnmatchcase(uc, v) for uc in m.user_classes for v in values)
        return False

    def match(self, m: Machine) -> Decision:
        """The most specific matching group (most selectors); ties between two matching
        groups of equal specificity go to the one listed first, and are reported."""
        best: Group | None = None
        why: list = []
        for g in self.groups:
            if all(self._selector_matches(k, v, m) for k, v in g.selectors.items()):
                if best is None or g.specificity > best.specificity:
                    best = g
        if best is None:
            if self.default_builtin:
                return Decision(None, "builtin-menu", ["no profiles configured: built-in menu"])
            return Decision(None, "", ["no group matches and no default group (one without selectors)"])
        for k, v in best.selectors.items():
            why.append(f"{k} matches {', '.join(map(str, v))}")
        if not best.selectors:
            why.append("default group (no selectors)")
        return Decision(best, best.profile, why)


def variables(m: Machine, server: str, http_port: int, group: Group | None) -> dict:
    a = archtable.lookup(m.arch)
    out = {"mac": m.mac, "ip": m.ip or "", "uuid": m.uuid or "", "arch": "" if m.arch is None else str(m.arch),
           "arch_name": a.name if a else "", "hostname": m.hostname or "", "firmware": m.firmware or "",
           "server": server, "http": f"http://{server}:{http_port}", "group": group.name if group else ""}
    if group:
        for k, v in group.metadata.items():
            out.setdefault(str(k), str(v))
    return out


def expand(text: str, vars: dict) -> str:
    """Replace {{ name }}; an unknown name is left as written (visible in explain)."""
    return _VAR.sub(lambda mo: vars.get(mo.group(1), mo.group(0)), text)


def _ipxe_safe(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def render(policy: Policy, name: str, vars: dict, decision_why: list | None = None) -> str:
    """An iPXE script for a profile (menus render their items as labelled sections)."""
    if name == "builtin-menu":
        return builtin_menu(vars, decision_why or [])
    p = policy.profiles[name]
    lines = ["#!ipxe", f"# proxydhcp profile {name} for {vars['mac']}"]
    if "menu" in p:
        m = p["menu"]
        lines += [f"menu {_ipxe_safe(p.get('description', name))}"]
        for item in m["items"]:
            lines.append(f"item {item} {_ipxe_safe(policy.profiles[item].get('description', item))}")
        default = m.get("default") or m["items"][0]
        timeout = m.get("timeout", 0) * 1000
        lines.append(f"choose --default {default} --timeout {timeout} target && goto ${{target}} || exit 1")
        for item in m["items"]:
            lines.append(f":{item}")
            body = render(policy, item, vars).splitlines()[2:]
            lines += body or ["exit 0"]
        return "\n".join(lines) + "\n"
    lines += _profile_body(p, vars)
    return "\n".join(lines) + "\n"


def _url(value: str, vars: dict) -> str:
    value = expand(value, vars)
    if "://" in value:
        return value
    return vars["http"] + "/" + value.lstrip("/")


def _profile_body(p: dict, vars: dict) -> list:
    if "script" in p:
        body = expand(p["script"], vars).splitlines()
        return [line for line in body if not line.startswith("#!ipxe")]
    if "kernel" in p:
        out = [f"kernel {_url(p['kernel'], vars)} {_ipxe_safe(expand(p.get('cmdline', ''), vars))}".rstrip()]
        out += [f"initrd {_url(i, vars)}" for i in p.get("initrd", [])]
        out.append("boot")
        return out
    if "chain" in p:
        return [f"chain {_url(p['chain'], vars)}"]
    if "sanboot" in p:
        return [f"sanboot --no-describe {_url(p['sanboot'], vars)}"]
    if "exit" in p:
        return ["exit 0"]
    return []


def builtin_menu(vars: dict, why: list) -> str:
    """The script a machine gets when no profiles are configured: who it is, and simple choices."""
    rule = "; ".join(why) or "none"
    return "\n".join([
        "#!ipxe",
        "# proxydhcp built-in menu: no profiles are configured",
        f"echo proxydhcp: MAC {vars['mac']} UUID {vars['uuid'] or '-'} arch {vars['arch_name'] or vars['arch'] or '-'} IP ${{ip}}",
        f"echo proxydhcp: rule: {_ipxe_safe(rule)}",
        ":menu",
        "menu proxydhcp: this machine has no boot profile",
        f"item --gap MAC {vars['mac']}  arch {vars['arch_name'] or '-'}",
        "item local Boot from local disk",
        "item shell iPXE shell",
        "item retry Ask proxydhcp again",
        "choose --default local --timeout 10000 target && goto ${target} || goto local",
        ":local",
        "exit 0",
        ":shell",
        "shell",
        "goto menu",
        ":retry",
        f"chain {vars['http']}/boot.ipxe?mac={vars['mac']}&arch={vars['arch']}&uuid={vars['uuid']} || goto menu",
        "",
    ])


def load(cfg) -> Policy:
    return Policy(cfg.profiles, cfg.groups)
