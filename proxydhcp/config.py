"""Configuration: the embedded default, merged with the operator's YAML, validated.

Owns parsing and validation of every section's shape. It does not open sockets or read
boot files. Sections are dataclasses; unknown keys and wrong types are a ConfigError
naming the key and the fix. `profiles` and `groups` are validated by proxydhcp.policy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from proxydhcp import arch


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and what to do. When
    the key is in the operator's file, `source` and `line` say where (see `located`)."""
    source: str | None = None
    line: int | None = None

    def located(self) -> str:
        """The message with the file and line of the key in front, when known."""
        return f"{self.source}, line {self.line}: {self}" if self.line else str(self)


@dataclass
class Quirk:
    """Overrides for clients that match: {match: {...}, set: {...}}."""
    match: dict = field(default_factory=dict)  # arch: [codes], vendor_class_prefix: str, mac_prefix: str, firmware_kind: str
    set: dict = field(default_factory=dict)    # redirect_4011: bool, reply_delay_ms: int, firmware: str


QUIRK_MATCH_KEYS = {"arch", "vendor_class_prefix", "mac_prefix", "firmware_kind"}
QUIRK_SET_KEYS = {"redirect_4011": bool, "reply_delay_ms": int, "firmware": str}


@dataclass
class DHCPConfig:
    interfaces: list = field(default_factory=list)
    port: int = 67
    proxy_port: int = 4011
    server_address: typing.Optional[str] = None
    ipxe_user_classes: list = field(default_factory=lambda: ["iPXE", "gPXE"])
    custom_user_class: typing.Optional[str] = None
    uefi_4011_redirect: bool = True
    reply_delay_ms: int = 0
    quirks: list = field(default_factory=list)
    allow_macs: list = field(default_factory=list)
    deny_macs: list = field(default_factory=list)
    allow_subnets: list = field(default_factory=list)
    deny_subnets: list = field(default_factory=list)
    rate_per_mac: float = 4.0
    burst_per_mac: int = 12
    rate_per_source: float = 1000.0
    burst_per_source: int = 2000
    max_sessions_in_progress: int = 1000
    max_sessions_per_source: int = 500
    known_machines_only: bool = False


@dataclass
class BootConfig:
    firmware: dict = field(default_factory=dict)
    script_path: str = "/boot.ipxe"


@dataclass
class TFTPConfig:
    enabled: bool = True
    port: int = 69
    root: str = "/usr/lib/ipxe"
    max_transfers: int = 1000
    max_transfers_per_client: int = 4
    transfer_timeout: float = 120.0
    retransmit_timeout: float = 1.0
    max_retries: int = 5
    backslash_as_slash: bool = False


@dataclass
class HTTPConfig:
    enabled: bool = True
    port: int = 8080
    root: typing.Optional[str] = None


@dataclass
class StateConfig:
    dir: str = "/var/lib/proxydhcp"


@dataclass
class EventsConfig:
    """The event store, boot sessions and the DHCP-server hook socket (proxydhcp.events)."""
    enabled: bool = True
    retention_days: float = 30.0
    success_stage: str = "boot_script"
    stall_timeout: float = 120.0
    loop_threshold: int = 3
    lease_window: float = 3600.0
    socket: typing.Optional[str] = None   # default: <state.dir>/hook.sock
    spool: typing.Optional[str] = None    # default: <state.dir>/spool
    user_hooks: list = field(default_factory=list)   # [{name, on, command | url, timeout}]
    user_hooks_max_concurrent: int = 4


@dataclass
class LogConfig:
    level: str = "info"
    format: str = "text"     # text (journald-friendly) or json: one line per record
    events: bool = False     # one log line per boot event (DHCP reply, TFTP transfer, HTTP fetch, ...)


@dataclass
class RunConfig:
    """How the daemon runs; read at start (a reload does not change them)."""
    user: typing.Optional[str] = None   # started as root: the user to switch to after binding
                                        # (default: proxydhcp if it exists, else nobody)
    drop_privileges: bool = True        # false: stay root (not advised)
    stop_grace: float = 10.0            # SIGTERM: seconds running transfers may take to finish


@dataclass
class Config:
    dhcp: DHCPConfig
    boot: BootConfig
    tftp: TFTPConfig
    http: HTTPConfig
    state: StateConfig
    log: LogConfig
    profiles: dict
    groups: list
    source: str = "<built-in default>"
    events: EventsConfig = field(default_factory=EventsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    policy: Any = field(default=None, repr=False, compare=False)   # proxydhcp.policy.Policy, set by parse


SECTIONS = {"dhcp": DHCPConfig, "boot": BootConfig, "tftp": TFTPConfig, "http": HTTPConfig,
            "state": StateConfig, "log": LogConfig, "events": EventsConfig,
            "run": RunConfig}


def default_text() -> str:
    return resources.files("proxydhcp").joinpath("default.yaml").read_text()


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _check_type(value, args[0], where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = origin or hint
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _section(cls, raw: Any, name: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of settings, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{name}: unknown setting(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"known: {', '.join(sorted(known))}")
    values = {k: _check_type(v, hints[k], f"{name}.{k}") for k, v in raw.items()}
    return cls(**values)


def _port(value: int, where: str, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(f"{where}: port must be 1-65535, got {value}")


def _validate(cfg: Config) -> None:
    d = cfg.dhcp
    _port(d.port, "dhcp.port")
    _port(d.proxy_port, "dhcp.proxy_port", allow_zero=True)
    _port(cfg.tftp.port, "tftp.port", allow_zero=True)
    _port(cfg.http.port, "http.port", allow_zero=True)
    if d.server_address is not None:
        try:
            ipaddress.IPv4Address(d.server_address)
        except ValueError:
            raise ConfigError(f"dhcp.server_address: {d.server_address!r} is not an IPv4 address") from None
    for i, name in enumerate(d.interfaces):
        if not isinstance(name, str) or not name:
            raise ConfigError(f"dhcp.interfaces[{i}]: expected an interface name, got {name!r}")
    for i, uc in enumerate(d.ipxe_user_classes):
        if not isinstance(uc, str) or not uc:
            raise ConfigError(f"dhcp.ipxe_user_classes[{i}]: expected a non-empty string")
    for key in ("allow_macs", "deny_macs"):
        for i, pat in enumerate(getattr(d, key)):
            import re
            if not isinstance(pat, str) or not re.fullmatch(r"[0-9a-fA-F*?:\-]{2,17}", pat):
                raise ConfigError(f"dhcp.{key}[{i}]: {pat!r} is not a MAC, OUI or wildcard pattern "
                                  f"(like 52:54:00:12:34:56, 52:54:00 or 52:54:00:*)")
    for key in ("allow_subnets", "deny_subnets"):
        for i, net in enumerate(getattr(d, key)):
            try:
                ipaddress.IPv4Network(str(net), strict=False)
            except ValueError:
                raise ConfigError(f"dhcp.{key}[{i}]: {net!r} is not an IPv4 subnet like 10.0.0.0/24") from None
    if d.rate_per_mac < 0 or d.rate_per_source < 0 or d.burst_per_mac < 1 or d.burst_per_source < 1:
        raise ConfigError("dhcp.rate_per_mac/rate_per_source must be >= 0 (0: no limit) and bursts >= 1")
    if d.max_sessions_in_progress < 0 or d.max_sessions_per_source < 0:
        raise ConfigError("dhcp.max_sessions_in_progress and dhcp.max_sessions_per_source must be >= 0 "
                          "(0: no cap)")
    if not 0 <= d.reply_delay_ms <= 10000:
        raise ConfigError(f"dhcp.reply_delay_ms: must be 0-10000, got {d.reply_delay_ms}")
    quirks = []
    for i, q in enumerate(d.quirks):
        where = f"dhcp.quirks[{i}]"
        quirk = _section(Quirk, q, where)
        bad = set(quirk.match) - QUIRK_MATCH_KEYS
        if bad:
            raise ConfigError(f"{where}.match: unknown selector(s) {sorted(bad)}; known: {sorted(QUIRK_MATCH_KEYS)}")
        if "arch" in quirk.match:
            codes = quirk.match["arch"]
            if not isinstance(codes, list) or not all(isinstance(c, int) and c in arch.BY_CODE for c in codes):
                raise ConfigError(f"{where}.match.arch: expected a list of arch codes (see `proxydhcp arches`)")
        for key, value in quirk.set.items():
            if key not in QUIRK_SET_KEYS:
                raise ConfigError(f"{where}.set.{key}: unknown; known: {sorted(QUIRK_SET_KEYS)}")
            _check_type(value, QUIRK_SET_KEYS[key], f"{where}.set.{key}")
        quirks.append(quirk)
    d.quirks = quirks
    firmware = {}
    for key, path in cfg.boot.firmware.items():
        canonical = arch.firmware_key(str(key))
        if canonical is None:
            raise ConfigError(f"boot.firmware.{key}: unknown firmware key; known: "
                              f"{', '.join(sorted(arch.FIRMWARE_KEYS))} (or efi-<cpu> for <cpu>-uefi)")
        if not isinstance(path, str) or not path:
            raise ConfigError(f"boot.firmware.{key}: expected a file name")
        if canonical in firmware:
            raise ConfigError(f"boot.firmware.{key}: the same firmware key as another entry ({canonical}); keep one")
        firmware[canonical] = path
    cfg.boot.firmware = firmware
    if not cfg.boot.script_path.startswith("/"):
        raise ConfigError(f"boot.script_path: must start with '/', got {cfg.boot.script_path!r}")
    if cfg.log.format not in ("text", "json"):
        raise ConfigError(f"log.format: must be text or json, got {cfg.log.format!r}")
    if cfg.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log.level: must be debug, info, warning or error, got {cfg.log.level!r}")
    if cfg.tftp.max_transfers < 1 or cfg.tftp.max_transfers_per_client < 1:
        raise ConfigError("tftp.max_transfers and tftp.max_transfers_per_client must be at least 1")
    if not 0 < cfg.tftp.transfer_timeout <= 86400:
        raise ConfigError(f"tftp.transfer_timeout: seconds a transfer may last, more than 0 and at most 86400, "
                          f"got {cfg.tftp.transfer_timeout}")
    if not 0 < cfg.tftp.retransmit_timeout <= 255:
        raise ConfigError(f"tftp.retransmit_timeout: seconds before a block is sent again, more than 0 and at "
                          f"most 255 (RFC 2349), got {cfg.tftp.retransmit_timeout}")
    if not 0 <= cfg.tftp.max_retries <= 100:
        raise ConfigError(f"tftp.max_retries: 0-100, got {cfg.tftp.max_retries}")
    if not 0 <= cfg.run.stop_grace <= 3600:
        raise ConfigError(f"run.stop_grace: seconds, 0-3600, got {cfg.run.stop_grace}")
    if cfg.run.user is not None and not cfg.run.user:
        raise ConfigError("run.user: a user name, or null for the default (proxydhcp, else nobody)")
    _validate_events(cfg.events)


def _validate_events(e: "EventsConfig") -> None:
    from proxydhcp.events.sessions import STAGES
    if e.success_stage not in STAGES:
        raise ConfigError(f"events.success_stage: one of {', '.join(STAGES)}, got {e.success_stage!r}")
    if e.retention_days <= 0 or e.stall_timeout <= 0 or e.lease_window <= 0:
        raise ConfigError("events.retention_days, stall_timeout and lease_window must be positive")
    if e.loop_threshold < 2:
        raise ConfigError(f"events.loop_threshold: at least 2, got {e.loop_threshold}")
    _validate_user_hooks(e)


USER_HOOK_EVENTS = ("session_succeeded", "session_failed", "stage_reached", "lease")
_USER_HOOK_KEYS = ("name", "on", "command", "url", "timeout")


def _validate_user_hooks(e: "EventsConfig") -> None:
    import os
    import re
    if e.user_hooks_max_concurrent < 1:
        raise ConfigError(f"events.user_hooks_max_concurrent: at least 1, got {e.user_hooks_max_concurrent}")
    seen = set()
    for i, h in enumerate(e.user_hooks):
        where = f"events.user_hooks[{i}]"
        if not isinstance(h, dict):
            raise ConfigError(f"{where}: expected a mapping with name, on, command or url, timeout; got {h!r}")
        unknown = set(h) - set(_USER_HOOK_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                              f"known: {', '.join(_USER_HOOK_KEYS)}")
        name = h.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name):
            raise ConfigError(f"{where}.name: expected a short name (letters, digits, _ . -), got {name!r}")
        if name in seen:
            raise ConfigError(f"{where}.name: {name!r} is used by another hook")
        seen.add(name)
        where = f"events.user_hooks[{i}] ({name})"
        on = h.get("on")
        if isinstance(on, str):
            on = [on]
        if not isinstance(on, list) or not on or any(o not in USER_HOOK_EVENTS for o in on):
            raise ConfigError(f"{where}.on: a list of {', '.join(USER_HOOK_EVENTS)}, got {h.get('on')!r}")
        command, url = h.get("command"), h.get("url")
        if (command is None) == (url is None):
            raise ConfigError(f"{where}: exactly one of command (argv list) or url (http webhook)")
        if command is not None and (not isinstance(command, list) or not command
                                    or not all(isinstance(a, str) and a for a in command)):
            raise ConfigError(f"{where}.command: a list of non-empty strings (argv, no shell), got {command!r}")
        if command is not None and not os.path.isabs(command[0]):
            raise ConfigError(f"{where}.command: the program must be an absolute path, got {command[0]!r}")
        if url is not None and (not isinstance(url, str) or not re.match(r"https?://[^/\s]+", url)):
            raise ConfigError(f"{where}.url: an http:// or https:// URL, got {url!r}")
        timeout = h.get("timeout", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ConfigError(f"{where}.timeout: seconds, more than 0 and at most 3600, got {timeout!r}")


def _merge(base: dict, over: dict) -> dict:
    """Operator settings over the default: mappings merge per key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if key in ("profiles", "groups", "firmware"):  # replaced whole: a merge would keep stale entries
            out[key] = value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# libyaml's loader when PyYAML was built with it (about ten times faster: a site with one group
# per machine has a long file, and a reload parses it on the reactor); the same safe types.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose_and_load(text: str):
    """The document's node tree (it knows each key's line) and its data, from one parse."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    finally:
        loader.dispose()


def parse(text: str | None, source: str = "<config>") -> Config:
    """Build a Config from YAML text layered over the default (None: the default alone)."""
    raw = _compose_and_load(default_text())[0]
    if text is not None:
        try:
            user, node = _compose_and_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(f"{source}: not valid YAML{where}: {what}; fix the file "
                              f"(proxydhcp check -c FILE checks it)") from None
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections")
        lines = _key_lines(node)
        user = _shorthands(user, lines)
        unknown = set(user) - set(SECTIONS) - {"profiles", "groups"}
        if unknown:
            first = min(unknown, key=lambda k: lines.get(str(k), 0))
            raise ConfigError(f"{source}, line {lines.get(str(first), '?')}: unknown section(s) "
                              f"{', '.join(sorted(map(str, unknown)))}; known: "
                              f"{', '.join(sorted(SECTIONS) + ['groups', 'profiles'] + sorted(SHORTHANDS))}")
        raw = _merge(raw, user)
        try:
            return _build(raw, source)
        except ConfigError as exc:
            exc.source, exc.line = source, _line_of(str(exc), lines)
            raise
    return _build(raw, source)


# Top-level shorthands for the settings every small config has: key -> (section, setting).
SHORTHANDS = {"interfaces": ("dhcp", "interfaces"), "firmware": ("boot", "firmware")}


def _shorthands(user: dict, lines: dict) -> dict:
    """`interfaces:` and `firmware:` at the top level, moved to dhcp.interfaces and
    boot.firmware (giving both forms is an error); their lines follow them."""
    for short, (section, key) in SHORTHANDS.items():
        if short not in user:
            continue
        sec = user.get(section) or {}
        if not isinstance(sec, dict):
            continue   # the section's own check names that
        if key in sec:
            raise ConfigError(f"{short} (line {lines.get(short, '?')}): also given as {section}.{key}; keep one")
        user = dict(user)
        user[section] = {**sec, key: user.pop(short)}
        for path, n in list(lines.items()):
            if path == short or path.startswith((short + ".", short + "[")):
                lines[f"{section}.{key}{path[len(short):]}"] = n
    return user


def _key_lines(document) -> dict[str, int]:
    """Line (1-based) of each key and list item of a YAML document (its node tree), by the
    path error messages use: dhcp.quirks[0].set.firmware."""
    out: dict[str, int] = {}

    def walk(node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = f"{path}.{k.value}" if path else str(k.value)
                out.setdefault(p, k.start_mark.line + 1)
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                p = f"{path}[{i}]"
                out.setdefault(p, item.start_mark.line + 1)
                walk(item, p)
    walk(document, "")
    return out


def _line_of(message: str, lines: dict[str, int]) -> int | None:
    """The line of the key an error message starts with (the nearest enclosing key found;
    for "X: unknown setting(s) a, b" the line of X.a)."""
    import re
    m = re.match(r"([^\s:(]+)(?::| \()", message)
    if not m:
        return None
    path = m[1]
    unknown = re.match(r"[^:]+: unknown [a-z]+\(s\) ([^,;\s]+)", message)
    if unknown and f"{path}.{unknown[1]}" in lines:
        return lines[f"{path}.{unknown[1]}"]
    while path not in lines:
        parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path)   # dhcp.quirks[0].set -> dhcp.quirks[0]
        if parent == path:
            return None
        path = parent
    return lines[path]


def _build(raw: dict, source: str) -> Config:
    """The Config of a merged raw mapping, validated."""
    sections = {name: _section(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    profiles = raw.get("profiles") or {}
    groups = raw.get("groups") or []
    if not isinstance(profiles, dict):
        raise ConfigError("profiles: expected a mapping of profile name -> profile")
    if not isinstance(groups, list):
        raise ConfigError("groups: expected a list of groups")
    cfg = Config(**sections, profiles=profiles, groups=groups, source=source)
    _validate(cfg)
    from proxydhcp import policy  # profiles and groups: validated by their owner
    cfg.policy = policy.load(cfg)
    return cfg


def load(path: str | None) -> Config:
    """Load the operator's file (or the default when path is None)."""
    if path is None:
        return parse(None, "<built-in default>")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    return parse(text, path)


def boot_file(value: str, tftp_root: str) -> tuple[str, str]:
    """(name, path) of a configured boot file (boot.firmware or a quirk's firmware).
    name is what a client is told to fetch: relative names, and absolute ones inside
    tftp.root, as root-relative paths; absolute paths elsewhere by their base name. path is
    the file the TFTP server serves for that name. The one rule for both sides."""
    root_prefix = os.path.normpath(tftp_root).rstrip("/") + "/"
    if value.startswith("/") and not value.startswith(root_prefix):
        return os.path.basename(value), value
    if root_prefix != "/" and value.startswith(root_prefix):
        value = value[len(root_prefix):]
    name = "/".join(p for p in value.split("/") if p not in ("", "."))
    return name, os.path.join(tftp_root, name)


def boot_file_name(value: str, tftp_root: str) -> str:
    return boot_file(value, tftp_root)[0]


# iPXE expands settings in the boot file name it is given (and in every script line), so the
# script URL asks iPXE itself for the address of the interface it is booting from. Behind NAT
# or an HTTP proxy that is the machine's address, not the connection's; an iPXE that does not
# expand it sends it as is, and the HTTP service then uses the connection's address.
IPXE_OWN_IP = "${netX/ip}"


def script_url(server: str, http_port: int, script_path: str, mac: str, arch: int | None,
               uuid: str | None) -> str:
    """The URL of a machine's boot script: the ProxyDHCP hands it to iPXE, and the built-in
    menu's "ask again" chains to it."""
    url = f"http://{server}:{http_port}{script_path}?mac={mac}"
    if arch is not None:
        url += f"&arch={arch}"
    if uuid:
        url += f"&uuid={uuid}"
    return url + f"&ip={IPXE_OWN_IP}"


class LiveConfig:
    """The running configuration. Services read `current` on each request, so a reload
    takes effect without a restart; `reload()` validates a new file first and keeps the old
    config when it is bad. Observers are told of each successful reload."""

    def __init__(self, cfg: Config, path: str | None = None) -> None:
        self.current = cfg
        self.path = path
        self.last_error: str | None = None
        self._observers: list = []

    def subscribe(self, observer) -> None:
        """observer(new_config) after each successful reload; it may raise ConfigError to veto."""
        self._observers.append(observer)

    def reload(self) -> tuple[bool, str]:
        from proxydhcp import metrics
        try:
            new = load(self.path)
            for observer in self._observers:
                observer(new)
        except ConfigError as exc:
            self.last_error = str(exc)
            metrics.CONFIG_RELOADS.labels("failed").inc()
            metrics.CONFIG_LAST_RELOAD_OK.set(0)
            return False, f"reload refused, keeping the running config: {' '.join(exc.located().split())}"
        self.current = new
        self.last_error = None
        metrics.CONFIG_RELOADS.labels("ok").inc()
        metrics.CONFIG_LAST_RELOAD_OK.set(1)
        return True, f"reloaded {new.source}"
