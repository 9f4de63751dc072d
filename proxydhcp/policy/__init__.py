"""Boot policy: profiles (what to boot) and groups (which machine gets which profile).

Owns the `profiles` and `groups` sections of the config: their validation (`load`, called
by config.parse, so `check-config` and every reload refuse a bad policy), the choice of a
group for a machine (`Policy.match`), the template variables and the iPXE script
(`Policy.script`), and `explain`. Pure except `external` (asks an API with Twisted) and
`reload` (signals and file watching for the running daemon). Knows nothing of sockets.

  profiles.py  profile kinds, templates `{{ name }}`, rendering to iPXE
  groups.py    selectors, specificity, ties refused at load
  globs.py     MAC / string wildcards and whether two can overlap
  external.py  the Pixiecore-style API profile (cache, timeout, fallback)
  explain.py   `proxydhcp explain`
  reload.py    SIGHUP and config-file watching
"""

from __future__ import annotations

import collections
import heapq
from dataclasses import dataclass, field

from proxydhcp import arch as archtable
from proxydhcp.config import ConfigError
from proxydhcp.config import script_url as config_script_url
from proxydhcp.policy import globs
from proxydhcp.policy import groups as groupmod
from proxydhcp.policy import profiles as profilemod
from proxydhcp.policy.groups import SELECTORS, Group, Machine, normalise_mac, normalise_uuid  # noqa: F401
from proxydhcp.policy.profiles import BUILTIN_VARS, Profile, expand  # noqa: F401

#: The profile name of the built-in menu (no profile applies).
BUILTIN = "builtin-menu"


@dataclass
class Decision:
    """Which group a machine matched and why. `profile` is a profile name or BUILTIN."""
    group: Group | None
    profile: str
    why: list
    also_matched: list = field(default_factory=list)  # (group, why lines) of less specific matches
    fallback: "Decision | None" = None                # for an api profile: the local decision

    @property
    def group_name(self) -> str | None:
        return self.group.name if self.group else None


class Policy:
    def __init__(self, profiles: dict, groups: list) -> None:
        if not isinstance(profiles, dict):
            raise ConfigError("profiles: expected a mapping of profile name -> profile")
        if not isinstance(groups, list):
            raise ConfigError("groups: expected a list of groups")
        self.profiles: dict[str, Profile] = {str(n): profilemod.parse(n, p) for n, p in profiles.items()}
        if BUILTIN in self.profiles:
            raise ConfigError(f"profiles.{BUILTIN}: the name is reserved for the built-in menu")
        profilemod.check_references(self.profiles)
        self.groups: list[Group] = [
            groupmod.parse(i, g, set(self.profiles), BUILTIN_VARS, profilemod.METADATA_MAY_SET)
            for i, g in enumerate(groups)]
        dup = {n for n, k in collections.Counter(g.name for g in self.groups).items() if k > 1}
        if dup:
            raise ConfigError(f"groups: the name(s) {', '.join(sorted(dup))} are used twice; names must be unique")
        groupmod.check_ties(self.groups)
        # A group whose mac selector names exact MACs only can match no other machine: such
        # groups are indexed by MAC, so matching a machine reads its own groups and the rest,
        # not one group per machine of the whole site.
        self._by_mac: dict[str, list[Group]] = {}
        self._rest: list[Group] = []
        for g in self.groups:
            macs = g.selectors.get("mac")
            if macs and not any(globs.has_wildcard(v) for v in macs):
                for mac in dict.fromkeys(macs):
                    self._by_mac.setdefault(mac, []).append(g)
            else:
                self._rest.append(g)
        known = set(BUILTIN_VARS) | {k for g in self.groups for k in g.metadata}
        for p in self.profiles.values():
            unknown = profilemod.template_names(p) - known
            if unknown:
                raise ConfigError(f"profiles.{p.name}: unknown template variable(s) "
                                  f"{', '.join('{{ ' + n + ' }}' for n in sorted(unknown))}; built-in: "
                                  f"{', '.join(BUILTIN_VARS)}; others come from group metadata")

    def match(self, m: Machine, local_only: bool = False) -> Decision:
        """The most specific matching group. `local_only` skips groups whose profile asks an
        API (the fallback when the API has no answer)."""
        hits = []
        own = self._by_mac.get(m.mac)
        candidates = heapq.merge(self._rest, own, key=lambda g: g.index) if own else self._rest
        for g in candidates:     # in file order: of two equal groups the first listed wins
            if local_only and self.profiles[g.profile].kind == "api":
                continue
            why = groupmod.why_matches(g, m)
            if why is not None:
                hits.append((g, why))
        if not hits:
            if not self.profiles:
                return Decision(None, BUILTIN, ["no profiles are configured: the built-in menu"])
            reason = "no group matches" + (" (without api groups)" if local_only else "")
            if not any(not g.selectors for g in self.groups):
                reason += " and there is no default group (one without selectors)"
            return Decision(None, BUILTIN, [reason + ": the built-in menu"])
        hits.sort(key=lambda h: h[0].specificity, reverse=True)
        best, why = hits[0]
        n, exact = best.specificity
        lines = [f"group {best.name!r}: " + (", ".join(why) if why else "the default group (no selectors)")]
        if len(hits) > 1:
            rule = f"{n} selector{'s' if n != 1 else ''}" + (f", {exact} naming one machine" if exact else "")
            lines.append(f"most specific of {len(hits)} matching groups ({rule})")
            if hits[1][0].specificity == best.specificity:
                # Only a machine with several user classes can get here: load refuses other ties.
                lines.append(f"equally specific: {hits[1][0].name!r}; the one listed first wins")
        d = Decision(best, best.profile, lines, also_matched=hits[1:])
        if self.profiles[best.profile].kind == "api":
            d.fallback = self.match(m, local_only=True)
        return d

    def variables(self, m: Machine, server: str, http_port: int, script_path: str,
                  decision: Decision) -> dict:
        """Template variables for a machine. Client-supplied values were validated by the
        caller (see proxydhcp.web.server.machine_from)."""
        a = archtable.lookup(m.arch)
        base = f"http://{server}:{http_port}"
        script_url = config_script_url(server, http_port, script_path, m.mac, m.arch, m.uuid)
        out = {"mac": m.mac, "mac_hyphen": m.mac.replace(":", "-"), "ip": m.ip or "", "uuid": m.uuid or "",
               "arch": "" if m.arch is None else str(m.arch), "arch_name": a.name if a else "",
               "firmware": m.firmware or "", "interface": m.interface or "", "hostname": m.hostname or "",
               "server": server, "http_port": str(http_port), "http": base, "script_url": script_url,
               "group": decision.group_name or "", "profile": decision.profile}
        if decision.group:
            out.update(decision.group.metadata)  # load made sure only `hostname` may be set this way
        return out

    def script(self, decision: Decision, vars: dict, profile: Profile | None = None,
               notes: tuple = ()) -> str:
        """The iPXE script for a decision (or for `profile`, an API's one-off answer)."""
        if profile is not None:
            table = dict(self.profiles, **{profile.name: profile})
            return profilemod.render(table, profile.name, vars, notes)
        if decision.profile == BUILTIN:
            return profilemod.builtin_menu(vars, decision.why)
        return profilemod.render(self.profiles, decision.profile, vars, notes)

    def api_settings(self, decision: Decision) -> dict | None:
        """The API settings when the decision's profile asks an API, else None."""
        if decision.profile == BUILTIN:
            return None
        p = self.profiles[decision.profile]
        return p.spec if p.kind == "api" else None

    def from_answer(self, decision: Decision, answer) -> tuple[Profile, tuple]:
        """The profile an API answer names or describes (raises external.NoAnswer if unusable)."""
        from proxydhcp.policy.external import NoAnswer
        notes = (answer.message,) if answer.message else ()
        if answer.profile is not None:
            p = self.profiles.get(answer.profile)
            if p is None or p.kind == "api":
                raise NoAnswer(f"the API named profile {answer.profile!r}, which is not a local profile")
            return p, notes
        raw = dict(answer.raw)
        try:
            p = profilemod.parse(decision.profile, raw)
        except ConfigError as exc:
            raise NoAnswer(f"the API answer is not a usable profile: {exc}") from None
        if p.kind in ("menu", "api"):
            raise NoAnswer(f"the API answered a {p.kind} profile; it may only answer one boot action")
        return p, notes


def load(cfg) -> Policy:
    """Validate the config's profiles and groups (raises ConfigError naming the key)."""
    pol = Policy(cfg.profiles, cfg.groups)
    if not cfg.http.root:
        for p in pol.profiles.values():
            for key, value in profilemod.locations(p):
                if profilemod.is_root_path(value):
                    raise ConfigError(f"profiles.{p.name}.{key}: {value!r} is a path under http.root, and no "
                                      f"http.root is set: set http.root, or write a full URL")
    return pol
