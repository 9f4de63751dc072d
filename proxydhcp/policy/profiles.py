"""Profiles: what a machine boots, validated at load and rendered to iPXE scripts.

A profile is one of
  script   an inline iPXE script template
  kernel   kernel URL + initrd URL(s) + cmdline
  chain    a URL iPXE chains to (a Foreman template, another script, an EFI binary)
  sanboot  an ISO image, by URL or by a path under http.root
  menu     items naming other profiles, with a default and a timeout
  exit     local boot: leave iPXE, the firmware tries its next boot device
  api      ask an external service (Pixiecore API style), see proxydhcp.policy.external

Templates write variables as `{{ name }}`. iPXE never uses `{{`, so its own `${...}`
settings pass through untouched. Values put into URLs are percent-encoded where a space or a
quote would break the line; values that come from the client (mac, ip, uuid, arch,
hostname) are validated before they get here, so a request cannot inject script lines.

Pure: no I/O. Knows nothing of groups or of HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote

from proxydhcp.config import ConfigError

KINDS = ("script", "kernel", "chain", "sanboot", "menu", "exit", "api")
_KEYS = {"script": {"script"}, "kernel": {"kernel", "initrd", "cmdline"}, "chain": {"chain"},
         "sanboot": {"sanboot"}, "menu": {"menu"}, "exit": {"exit"}, "api": {"api"}}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
#: Variables every template may use. Group metadata adds more; it may set `hostname` but
#: no other built-in name.
BUILTIN_VARS = ("mac", "mac_hyphen", "ip", "uuid", "arch", "arch_name", "firmware", "interface",
                "hostname", "server", "http_port", "http", "script_url", "group", "profile")
METADATA_MAY_SET = ("hostname",)
LABEL_PREFIX = "proxydhcp-"
FAILED_LABEL = LABEL_PREFIX + "failed"
# What a URL may keep as it is: RFC 3986 reserved and unreserved characters, and '%'.
_URL_SAFE = "/:@!$&'()*+,;=-._~?#[]%"


@dataclass(frozen=True)
class Profile:
    name: str
    kind: str
    description: str
    spec: dict = field(hash=False, compare=False)  # the kind's normalised settings

    @property
    def label(self) -> str:
        return LABEL_PREFIX + self.name


def _fail(where: str, msg: str):
    raise ConfigError(f"{where}: {msg}")


def _single_line(value, where: str) -> str:
    if not isinstance(value, str):
        _fail(where, f"expected a string, got {type(value).__name__}")
    if "\n" in value or "\r" in value:
        _fail(where, "must be one line")
    return value


def _location(value, where: str) -> str:
    """A URL, or a path under http.root (no '..')."""
    value = _single_line(value, where).strip()
    if not value:
        _fail(where, "a URL or a path under http.root, got an empty string")
    if "://" not in value and ".." in value.split("/"):
        _fail(where, f"{value!r}: a path under http.root may not contain '..'")
    if " " in _VAR.sub("", value):
        _fail(where, f"{value!r}: no spaces in a URL (write %20)")
    return value


def check_name(name, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(where, f"{name!r}: profile names are letters, digits, '-' and '_' (they become iPXE labels)")
    return name


def parse(name, raw, api_defaults: dict | None = None) -> Profile:
    """Validate one profile's shape (references to other profiles are checked by the caller)."""
    where = f"profiles.{name}"
    check_name(name, where)
    if not isinstance(raw, dict):
        _fail(where, f"expected a mapping with one of {', '.join(KINDS)}")
    kinds = [k for k in KINDS if k in raw]
    if len(kinds) != 1:
        _fail(where, f"needs exactly one of {', '.join(KINDS)} (got {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    extra = set(raw) - _KEYS[kind] - {"description"}
    if extra:
        _fail(where, f"unknown key(s) {', '.join(sorted(map(str, extra)))} for a {kind} profile; "
                     f"allowed: {', '.join(sorted(_KEYS[kind] | {'description'}))}")
    description = _single_line(raw.get("description", name), where + ".description")
    spec: dict = {}
    if kind == "script":
        if not isinstance(raw["script"], str) or not raw["script"].strip():
            _fail(where + ".script", "expected the text of an iPXE script")
        spec["script"] = raw["script"]
    elif kind == "kernel":
        spec["kernel"] = _location(raw["kernel"], where + ".kernel")
        initrd = raw.get("initrd", [])
        initrd = [initrd] if isinstance(initrd, str) else initrd
        if not isinstance(initrd, list):
            _fail(where + ".initrd", "a URL or path, or a list of them")
        spec["initrd"] = [_location(v, f"{where}.initrd[{i}]") for i, v in enumerate(initrd)]
        spec["cmdline"] = _single_line(raw.get("cmdline", ""), where + ".cmdline")
    elif kind in ("chain", "sanboot"):
        spec[kind] = _location(raw[kind], f"{where}.{kind}")
    elif kind == "exit":
        if raw["exit"] is not True:
            _fail(where + ".exit", "write `exit: true` for local boot")
    elif kind == "menu":
        spec.update(_parse_menu(raw["menu"], where + ".menu"))
    elif kind == "api":
        from proxydhcp.policy import external
        spec.update(external.parse_settings(raw["api"], where + ".api"))
    return Profile(name, kind, description, spec)


def _parse_menu(m, where: str) -> dict:
    if not isinstance(m, dict):
        _fail(where, "expected a mapping with items, and optionally title, default, timeout")
    extra = set(m) - {"items", "title", "default", "timeout"}
    if extra:
        _fail(where, f"unknown key(s) {', '.join(sorted(map(str, extra)))}; allowed: items, title, default, timeout")
    items = m.get("items")
    if not isinstance(items, list) or not items:
        _fail(where + ".items", "a list of profile names (or {profile, label, key}, or {gap: text})")
    out = []
    for i, item in enumerate(items):
        w = f"{where}.items[{i}]"
        if isinstance(item, str):
            out.append({"profile": item, "label": None, "key": None})
            continue
        if isinstance(item, dict) and set(item) == {"gap"}:
            out.append({"gap": _single_line(item["gap"], w + ".gap")})
            continue
        if not isinstance(item, dict) or "profile" not in item or set(item) - {"profile", "label", "key"}:
            _fail(w, "a profile name, {profile: name, label: text, key: letter} or {gap: text}")
        key = item.get("key")
        if key is not None and (not isinstance(key, str) or len(key) != 1 or not key.isalnum()):
            _fail(w + ".key", "one letter or digit")
        label = item.get("label")
        out.append({"profile": item["profile"], "label": None if label is None else _single_line(label, w + ".label"),
                    "key": key})
    names = [it["profile"] for it in out if "profile" in it]
    if not names:
        _fail(where + ".items", "needs at least one profile item")
    default = m.get("default")
    if default is not None and default not in names:
        _fail(where + ".default", f"{default!r} is not one of the items")
    timeout = m.get("timeout", 0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        _fail(where + ".timeout", "seconds, a non-negative number (0: wait for a choice)")
    if timeout and default is None:
        _fail(where + ".timeout", "needs a default: the item taken when the time is up")
    title = m.get("title")
    return {"items": out, "default": default, "timeout": timeout,
            "title": None if title is None else _single_line(title, where + ".title")}


def check_references(profiles: dict[str, Profile]) -> None:
    """Menu items must name existing profiles that can be rendered inline (not `api`)."""
    for p in profiles.values():
        if p.kind != "menu":
            continue
        for i, item in enumerate(p.spec["items"]):
            target = item.get("profile")
            if target is None:
                continue
            where = f"profiles.{p.name}.menu.items[{i}]"
            if target not in profiles:
                _fail(where, f"{target!r} is not a profile")
            if target == p.name:
                _fail(where, "a menu cannot list itself")
            if profiles[target].kind == "api":
                _fail(where, f"{target!r} asks an external API; a menu item must be a local profile")


def template_names(p: Profile) -> set[str]:
    """Variable names a profile's templates use."""
    texts: list[str] = []
    if p.kind == "script":
        texts.append(p.spec["script"])
    elif p.kind == "kernel":
        texts += [p.spec["kernel"], p.spec["cmdline"], *p.spec["initrd"]]
    elif p.kind in ("chain", "sanboot"):
        texts.append(p.spec[p.kind])
    elif p.kind == "api":
        texts.append(p.spec["url"])
    return {mo.group(1) for t in texts for mo in _VAR.finditer(t)}


def locations(p: Profile) -> list[tuple[str, str]]:
    """(key, location) of each URL-or-path a profile names."""
    if p.kind == "kernel":
        return [("kernel", p.spec["kernel"])] + [(f"initrd[{i}]", v) for i, v in enumerate(p.spec["initrd"])]
    if p.kind in ("chain", "sanboot"):
        return [(p.kind, p.spec[p.kind])]
    return []


def is_root_path(location: str) -> bool:
    """A location served from http.root: no scheme, and not a template that may supply one
    (`{{ http }}/x`)."""
    return "://" not in location and not location.lstrip().startswith("{{")


def expand(text: str, vars: dict, in_url: bool = False) -> str:
    """Replace each `{{ name }}`; `${...}` is iPXE's and left alone. A name the variables lack
    becomes empty (load-time validation makes sure it is at least defined somewhere)."""
    def one(mo):
        value = str(vars.get(mo.group(1), ""))
        return quote(value, safe=_URL_SAFE) if in_url else value.replace("\n", " ").replace("\r", " ")
    return _VAR.sub(one, text)


def url(value: str, vars: dict) -> str:
    """A profile location as a URL: absolute URLs as written, paths under http.root on our HTTP."""
    value = expand(value, vars, in_url=True)
    if "://" in value:
        return value
    return f"{vars['http']}/{value.lstrip('/')}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _words(text: str) -> str:
    """Free text as the trailing arguments of an iPXE command: one line, and after `--` when it
    starts with '-' (iPXE would read `-=[ Lab ]=-` as options and fail the command)."""
    text = _one_line(text)
    return f"-- {text}" if text.startswith("-") else text


def render(profiles: dict[str, Profile], name: str, vars: dict, notes: tuple = ()) -> str:
    """The iPXE script for profile `name`. A menu becomes one script: every profile reachable
    from it is a labelled section, and menu choices `goto` those labels. `notes` are shown
    on the console first (an API's message)."""
    root = profiles[name]
    who = f"# proxydhcp: profile {name} for {vars.get('mac', '?')}"
    if vars.get("group"):
        who += f" (group {vars['group']})"
    lines = ["#!ipxe", who] + [f"echo {_words(n)}" for n in notes]
    if root.kind == "menu":
        lines.append(f"goto {root.label}")
        for p in reachable(profiles, name):
            lines.append(f":{p.label}")
            lines += _menu(p, profiles) if p.kind == "menu" else _body(p, vars)
    else:
        lines += _body(root, vars)
    lines += [f":{FAILED_LABEL}",
              "echo proxydhcp: booting failed (${errno}); see the server's log and `proxydhcp sessions`",
              "prompt --timeout 10000 Press any key for the iPXE shell... || exit 1",
              "shell",
              "exit 1"]
    return "\n".join(lines) + "\n"


def reachable(profiles: dict[str, Profile], name: str) -> list[Profile]:
    """Profiles reachable from `name` through menu items, `name` first, each once."""
    order, seen, todo = [], {name}, [name]
    while todo:
        p = profiles[todo.pop(0)]
        order.append(p)
        if p.kind == "menu":
            for item in p.spec["items"]:
                target = item.get("profile")
                if target and target not in seen:
                    seen.add(target)
                    todo.append(target)
    return order


def _body(p: Profile, vars: dict) -> list[str]:
    on_fail = f" || goto {FAILED_LABEL}"
    if p.kind == "script":
        lines = expand(p.spec["script"], vars).splitlines()
        if lines and lines[0].startswith("#!"):
            lines = lines[1:]
        return lines + ["exit"]
    if p.kind == "kernel":
        cmdline = _one_line(expand(p.spec["cmdline"], vars))
        out = ["imgfree", f"kernel {url(p.spec['kernel'], vars)} {cmdline}".rstrip() + on_fail]
        out += [f"initrd {url(i, vars)}{on_fail}" for i in p.spec["initrd"]]
        return out + ["boot" + on_fail]
    if p.kind == "chain":
        return [f"chain {url(p.spec['chain'], vars)}{on_fail}", "exit"]
    if p.kind == "sanboot":
        return [f"sanboot --no-describe {url(p.spec['sanboot'], vars)}{on_fail}"]
    if p.kind == "exit":
        return ["echo proxydhcp: local boot", "exit"]
    raise ValueError(f"profile {p.name} ({p.kind}) cannot be rendered as a script")


def _menu(p: Profile, profiles: dict[str, Profile]) -> list[str]:
    m = p.spec
    out = [f"menu {_words(m['title'] or p.description)}"]
    for item in m["items"]:
        if "gap" in item:
            text = _one_line(item["gap"])
            out.append(f"item --gap -- {text}" if text else "item --gap")
            continue
        target = profiles[item["profile"]]
        key = f"--key {item['key']} " if item["key"] else ""
        out.append(f"item {key}{target.label} {_one_line(item['label'] or target.description)}")
    choose = "choose"
    if m["default"]:
        choose += f" --default {profiles[m['default']].label}"
        if m["timeout"]:
            choose += f" --timeout {int(m['timeout'] * 1000)}"
    out += [f"{choose} proxydhcp_target || exit 1", "goto ${proxydhcp_target}"]
    return out


def builtin_menu(vars: dict, why: list[str]) -> str:
    """The script a machine gets when no profile applies to it (no profiles configured, or no
    group matches): who it is, which rule matched, and simple ways on."""
    rule = _one_line("; ".join(why) or "none")
    ident = (f"MAC {vars['mac']}  UUID {vars['uuid'] or '-'}  arch {vars['arch_name'] or vars['arch'] or '-'}"
             f"  IP {vars['ip'] or '-'}")
    return "\n".join([
        "#!ipxe",
        "# proxydhcp built-in menu: no boot profile applies to this machine",
        f"echo proxydhcp: {ident}",
        f"echo proxydhcp: rule: {rule}",
        f":{LABEL_PREFIX}menu",
        "menu proxydhcp: no boot profile for this machine",
        f"item --gap -- {ident}",
        f"item --gap -- Firmware {vars['firmware'] or '-'}  interface {vars['interface'] or '-'}",
        f"item --gap -- Rule: {rule}",
        "item --gap",
        f"item --key l {LABEL_PREFIX}local (l) Boot from the local disk",
        f"item --key s {LABEL_PREFIX}shell (s) iPXE shell",
        f"item --key r {LABEL_PREFIX}retry (r) Ask proxydhcp again",
        f"choose --default {LABEL_PREFIX}local --timeout 30000 proxydhcp_target || goto {LABEL_PREFIX}local",
        "goto ${proxydhcp_target}",
        f":{LABEL_PREFIX}local",
        "exit",
        f":{LABEL_PREFIX}shell",
        "shell",
        f"goto {LABEL_PREFIX}menu",
        f":{LABEL_PREFIX}retry",
        f"chain --replace {vars['script_url']} || goto {LABEL_PREFIX}menu",
        "",
    ])
