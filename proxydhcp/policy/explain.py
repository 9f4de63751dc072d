"""`proxydhcp explain`: which group a machine matches, why (and why not the others), and the
script it would get. Reads the config only; asks an `api` profile's URL unless told not to."""

from __future__ import annotations

from proxydhcp import arch as archtable
from proxydhcp.config import Config, ConfigError
from proxydhcp.policy import BUILTIN, Machine, Policy, external, groups, load, normalise_uuid


def machine(mac: str, arch=None, uuid=None, ip=None, firmware=None, interface=None, vendor_class=None,
            user_classes=(), hostname=None) -> Machine:
    m = groups.normalise_mac(mac)
    if m is None:
        raise ConfigError(f"--mac: {mac!r} is not a MAC address like 52:54:00:12:34:56")
    u = None
    if uuid:
        u = normalise_uuid(uuid)
        if u is None:
            raise ConfigError(f"--uuid: {uuid!r} is not a UUID")
    return Machine(mac=m, ip=ip, uuid=u, arch=arch, firmware=firmware, interface=interface,
                   vendor_class=vendor_class, user_classes=tuple(user_classes or ()), hostname=hostname)


def explain(cfg: Config, m: Machine, server: str, ask_api: bool = True) -> tuple[list[str], str]:
    """(report lines, script)."""
    pol: Policy = load(cfg)
    d = pol.match(m)
    out = [f"machine: mac {m.mac}  arch {archtable.label(m.arch)}"
           f"{'' if m.arch is None else f' ({m.arch})'}  uuid {m.uuid or '-'}  ip {m.ip or '-'}",
           f"         firmware {m.firmware or '-'}  interface {m.interface or '-'}  "
           f"vendor class {m.vendor_class or '-'}  user classes {', '.join(m.user_classes) or '-'}",
           f"group:   {d.group_name or '(none)'}",
           f"profile: {d.profile}" + (" (no profile applies)" if d.profile == BUILTIN else "")]
    out += [f"  why: {line}" for line in d.why]
    if cfg.dhcp.known_machines_only:
        from proxydhcp.responder import UNKNOWN_MACHINE, known_group
        known = known_group(cfg, m.mac, m.uuid, m.arch, m.interface, m.ip, m.vendor_class)
        if known is None:
            out.append(f"dhcp:    no reply at all: dhcp.known_machines_only is on and no group matches this "
                       f"machine (firmware and user_class selectors aside); silence reason {UNKNOWN_MACHINE}")
            return out, "# none: proxydhcp does not answer this machine (dhcp.known_machines_only)\n"
        out.append(f"dhcp:    answered: known through group {known.name!r} (dhcp.known_machines_only)")
    for g, why in d.also_matched:
        out.append(f"  less specific, also matched: {g.name!r} ({g.describe()})")
    for g in pol.groups:
        if g is d.group or any(g is h for h, _ in d.also_matched):
            continue
        out.append(f"  not matched: {g.name!r}: {groups.missing(g, m)}")
    vars = pol.variables(m, server, cfg.http.port, cfg.boot.script_path, d)
    settings = pol.api_settings(d)
    if settings is None:
        return out, pol.script(d, vars)
    url = pol.profiles[d.profile].spec["url"]
    from proxydhcp.policy.profiles import expand
    url = expand(url, vars, in_url=True)
    out.append(f"  api: {d.profile} asks {url} (timeout {settings['timeout']:g} s)")
    if ask_api:
        try:
            answer = external.ask_blocking(settings, url)
            profile, notes = pol.from_answer(d, answer)
            out.append(f"  api answered: {answer.profile or profile.kind}")
            return out, pol.script(d, vars, profile, notes)
        except external.NoAnswer as exc:
            out.append(f"  api: {exc}; falling back to the local groups")
    else:
        out.append("  api: not asked (--no-api); showing the fallback")
    fb = d.fallback
    out.append(f"  fallback: group {fb.group_name or '(none)'}, profile {fb.profile}: {'; '.join(fb.why)}")
    vars = pol.variables(m, server, cfg.http.port, cfg.boot.script_path, fb)
    return out, pol.script(fb, vars)
