"""Selector precedence tables, ties refused at load, wildcard overlap."""

import pytest

from proxydhcp import policy
from proxydhcp.config import ConfigError
from proxydhcp.policy import globs

PROFILES = {name: {"exit": True} for name in "abcdefghijklmn"}

U1 = "6e65746c-6162-4000-8000-000000000001"
DEFAULT = {"name": "default", "profile": "a"}
UEFI = {"name": "uefi", "profile": "b", "selectors": {"arch": ["x64-uefi", 11]}}
RACK1 = {"name": "rack1", "profile": "c", "selectors": {"mac": "52:54:00:01:*"}}
ONE_BOX = {"name": "one-box", "profile": "d", "selectors": {"mac": "52:54:00:01:00:09"}}
RACK1_UEFI = {"name": "rack1-uefi", "profile": "e", "selectors": {"mac": "52:54:00:01:*", "arch": 7}}
LAB = {"name": "lab", "profile": "f", "selectors": {"subnet": "10.9.0.0/24", "interface": "eth1"}}
IPXE = {"name": "ipxe-users", "profile": "g", "selectors": {"user_class": "iPXE", "firmware": "ipxe"}}
BY_UUID = {"name": "by-uuid", "profile": "h", "selectors": {"uuid": "6E65746C-6162-4000-8000-000000000001"}}
HTTP_BOOT = {"name": "http-boot", "profile": "i", "selectors": {"firmware": "uefi-http", "vendor_class": "HTTPClient:*"}}
BOX_SUBNET = {"name": "box-and-subnet", "profile": "j", "selectors": {"mac": "52:54:00:01:00:09", "subnet": "10.9.0.0/16"}}
RACKS = [DEFAULT, RACK1, ONE_BOX, RACK1_UEFI, BOX_SUBNET]


# Each row is a small policy (a big one would hold ties, which load refuses: see below).
@pytest.mark.parametrize("groups,machine,group", [
    ([DEFAULT, UEFI], dict(mac="aa:00:00:00:00:01"), "default"),
    ([DEFAULT, UEFI], dict(mac="aa:00:00:00:00:01", arch=7), "uefi"),
    ([DEFAULT, UEFI], dict(mac="aa:00:00:00:00:01", arch=11), "uefi"),
    ([UEFI], dict(mac="aa:00:00:00:00:01", arch=0), None),
    (RACKS, dict(mac="52:54:00:01:00:05", arch=0), "rack1"),
    (RACKS, dict(mac="52:54:00:01:00:05", arch=7), "rack1-uefi"),                 # 2 selectors beat 1
    (RACKS, dict(mac="52:54:00:01:00:09", arch=0), "one-box"),                    # exact MAC beats a wildcard
    (RACKS, dict(mac="52:54:00:01:00:09", arch=7), "rack1-uefi"),                 # ... but not 2 selectors
    (RACKS, dict(mac="52:54:00:01:00:09", arch=7, ip="10.9.3.3"), "box-and-subnet"),  # 2 with an exact MAC beat 2
    (RACKS, dict(mac="52:54:00:02:00:09", arch=7, ip="10.9.3.3"), "default"),
    ([DEFAULT, LAB], dict(mac="aa:00:00:00:00:01", ip="10.9.0.7", interface="eth1"), "lab"),
    ([DEFAULT, LAB], dict(mac="aa:00:00:00:00:01", ip="10.9.0.7", interface="eth2"), "default"),
    ([DEFAULT, LAB], dict(mac="aa:00:00:00:00:01", interface="eth1"), "default"),  # no IP: no subnet match
    ([DEFAULT, IPXE], dict(mac="aa:00:00:00:00:01", user_classes=("iPXE",), firmware="ipxe"), "ipxe-users"),
    ([DEFAULT, IPXE], dict(mac="aa:00:00:00:00:01", user_classes=("gPXE",), firmware="ipxe"), "default"),
    ([DEFAULT, UEFI, BY_UUID], dict(mac="aa:00:00:00:00:01", uuid=U1, arch=7), "by-uuid"),  # a UUID names one machine
    ([DEFAULT, UEFI, BY_UUID], dict(mac="aa:00:00:00:00:01", arch=7), "uefi"),
    ([DEFAULT, HTTP_BOOT], dict(mac="aa:00:00:00:00:01", firmware="uefi-http",
                                vendor_class="HTTPClient:Arch:00016:UNDI:003000"), "http-boot"),
    ([DEFAULT, HTTP_BOOT], dict(mac="aa:00:00:00:00:01", firmware="uefi-http",
                                vendor_class="PXEClient:Arch:00007"), "default"),
])
def test_most_specific_group_wins(groups, machine, group):
    d = policy.Policy(PROFILES, groups).match(policy.Machine(**machine))
    if group is None:
        assert d.group is None and d.profile == policy.BUILTIN
        return
    assert d.group.name == group, d.why
    assert d.why[0].startswith(f"group {group!r}")


def test_why_names_the_matching_values_and_the_losers():
    d = policy.Policy(PROFILES, RACKS).match(policy.Machine("52:54:00:01:00:05", arch=7))
    assert "mac 52:54:00:01:00:05 matches 52:54:00:01:*" in d.why[0] and "arch 7 matches x64-uefi (7)" in d.why[0]
    assert "most specific of 3 matching groups (2 selectors)" in d.why[1]
    assert [g.name for g, _ in d.also_matched] == ["rack1", "default"]


def test_the_common_mix_of_wildcards_and_arch_is_a_tie():
    with pytest.raises(ConfigError, match="'uefi' .* and 'rack1' .* are equally specific"):
        policy.Policy(PROFILES, [UEFI, RACK1])


def T(*groups):
    return [dict(g, profile="a", name=f"g{i}") for i, g in enumerate(groups)]


@pytest.mark.parametrize("groups", [
    T({}, {}),                                                               # two defaults
    T({"selectors": {"arch": 7}}, {"selectors": {"arch": [0, 7]}}),
    T({"selectors": {"arch": 7}}, {"selectors": {"firmware": "ipxe"}}),      # an x64 UEFI iPXE matches both
    T({"selectors": {"mac": "52:54:*"}}, {"selectors": {"arch": 7}}),
    T({"selectors": {"mac": "52:54:00:*"}}, {"selectors": {"mac": "*:00:01"}}),
    T({"selectors": {"mac": "52:54:00:01:02:03"}}, {"selectors": {"mac": "52-54-00-01-02-03"}}),
    T({"selectors": {"mac": "52:54:00:01:02:03"}}, {"selectors": {"uuid": U1}}),
    T({"selectors": {"subnet": "10.0.0.0/8"}}, {"selectors": {"subnet": "10.1.0.0/16"}}),
    T({"selectors": {"interface": "eth*"}}, {"selectors": {"interface": "*1"}}),
    T({"selectors": {"vendor_class": "PXEClient:*"}}, {"selectors": {"vendor_class": "*:Arch:00007*"}}),
])
def test_ties_are_config_errors_at_load(groups):
    with pytest.raises(ConfigError, match="equally specific"):
        policy.Policy(PROFILES, groups)


@pytest.mark.parametrize("groups", [
    T({}, {"selectors": {"arch": 7}}),
    T({"selectors": {"arch": 7}}, {"selectors": {"arch": 0}}),
    T({"selectors": {"mac": "52:54:00:*"}}, {"selectors": {"mac": "52:55:*"}}),
    T({"selectors": {"mac": "52:54:00:01:02:03"}}, {"selectors": {"mac": "52:54:00:01:02:04"}}),
    T({"selectors": {"mac": "52:54:00:01:02:03"}}, {"selectors": {"arch": 7}}),   # exact MAC ranks higher
    T({"selectors": {"mac": "52:54:00:??:*"}}, {"selectors": {"mac": "52:54:01:*"}}),
    T({"selectors": {"subnet": "10.0.0.0/24"}}, {"selectors": {"subnet": "10.0.1.0/24"}}),
    T({"selectors": {"vendor_class": "PXEClient:*"}}, {"selectors": {"vendor_class": "HTTPClient:*"}}),
    T({"selectors": {"arch": 7, "interface": "eth0"}}, {"selectors": {"arch": 7, "interface": "eth1"}}),
])
def test_groups_that_cannot_tie_load(groups):
    policy.Policy(PROFILES, groups)


def test_many_per_machine_groups_are_not_compared_pairwise(monkeypatch):
    """One group per machine (exact MACs) is the large case: the tie check compares such a
    group only with groups sharing its MAC or having no exact MAC, never all pairs (5000
    groups would be 12.5 million comparisons)."""
    from proxydhcp.policy import groups as groupmod
    compared = []
    real = groupmod.could_overlap
    monkeypatch.setattr(groupmod, "could_overlap", lambda a, b: compared.append((a.name, b.name)) or real(a, b))
    macs = [f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" for i in range(5000)]
    groups = [{"name": f"m{i}", "profile": "a", "selectors": {"mac": mac}} for i, mac in enumerate(macs)]
    rack = {"name": "rack", "profile": "c", "selectors": {"mac": "52:54:01:*", "arch": 7}}
    rack2 = {"name": "rack2", "profile": "c", "selectors": {"mac": "52:54:02:*", "arch": 7}}
    pol = policy.Policy(PROFILES, groups + [{"name": "default", "profile": "b"}, rack, rack2])
    assert pol.match(policy.Machine("52:54:00:00:10:00")).group.name == "m4096"
    assert compared == [("rack", "rack2")]          # no two distinct exact MACs are ever compared
    with pytest.raises(ConfigError, match="'m7' .* and 'again' .* are equally specific"):
        policy.Policy(PROFILES, groups + [{"name": "again", "profile": "b", "selectors": {"mac": macs[7]}}])


def test_matching_reads_a_machines_own_exact_mac_groups_and_the_rest_only(monkeypatch):
    """Matching one machine among 5000 one-machine groups reads its own group and the groups
    without exact MACs, and decides what reading every group in file order decides."""
    from proxydhcp.policy import groups as groupmod
    macs = [f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}" for i in range(5000)]
    groups = [{"name": f"m{i}", "profile": "a", "selectors": {"mac": mac}} for i, mac in enumerate(macs)]
    groups += [{"name": "default", "profile": "b"},
               {"name": "rack-uefi", "profile": "c", "selectors": {"mac": "52:54:00:00:1?:*", "arch": 7}},
               {"name": "two", "profile": "c", "selectors": {"mac": [macs[5], macs[6]], "arch": 0}},
               {"name": "ipxe-users", "profile": "b", "selectors": {"user_class": "iPXE"}},
               {"name": "mine", "profile": "c", "selectors": {"user_class": "mine"}}]
    pol = policy.Policy(PROFILES, groups)

    def every_group(m):     # the reference: every group, in file order, most specific first
        hits = [g for g in pol.groups if groupmod.why_matches(g, m) is not None]
        hits.sort(key=lambda g: g.specificity, reverse=True)
        return [g.name for g in hits]

    read = []
    real = groupmod.why_matches
    monkeypatch.setattr(groupmod, "why_matches", lambda g, m: read.append(g.name) or real(g, m))
    machines = [policy.Machine(macs[4096]), policy.Machine(macs[0x1005], arch=7),
                policy.Machine(macs[5], arch=0), policy.Machine(macs[6], arch=7),
                policy.Machine("52:54:00:99:99:99", arch=7), policy.Machine(macs[9], user_classes=("iPXE", "mine"))]
    for m in machines:
        read.clear()
        d = pol.match(m)
        assert len(read) <= 7, read            # its own group(s) and the 5 without exact MACs
        assert [d.group.name] + [g.name for g, _ in d.also_matched] == every_group(m)
    assert pol.match(machines[0]).group.name == "m4096"
    assert pol.match(machines[1]).group.name == "rack-uefi"          # 2 selectors beat its own 1
    assert pol.match(machines[2]).group.name == "two"
    assert pol.match(machines[4]).group.name == "default"


@pytest.mark.parametrize("groups,error", [
    ([{"profile": "nope"}], "not defined"),
    ([{"profile": "a", "selectors": {"colour": "red"}}], "unknown selector"),
    ([{"profile": "a", "selectors": {"arch": "z80"}}], "not an arch"),
    ([{"profile": "a", "selectors": {"arch": True}}], "not an arch"),
    ([{"profile": "a", "selectors": {"subnet": "10.0.0.0/33"}}], r"groups\[0\] \(group0\).selectors.subnet"),
    ([{"profile": "a", "selectors": {"mac": "52:54:00"}}], "not a MAC or MAC pattern"),
    ([{"profile": "a", "selectors": {"mac": "zz:*"}}], "not a MAC or MAC pattern"),
    ([{"profile": "a", "selectors": {"uuid": "not-a-uuid"}}], "not a UUID"),
    ([{"profile": "a", "selectors": {"firmware": "bios"}}], "one of legacy-pxe"),
    ([{"profile": "a", "selectors": {"arch": []}}], "empty list"),
    ([{"profile": "a", "colour": 1}], "unknown key"),
    ([{"profile": "a", "name": "x"}, {"profile": "a", "name": "x", "selectors": {"arch": 7}}], "used twice"),
])
def test_bad_groups_are_config_errors(groups, error):
    with pytest.raises(ConfigError, match=error):
        policy.Policy(PROFILES, groups)


@pytest.mark.parametrize("p,q,positions,expected", [
    ("52:54:00:*", "*:00:01", globs.MAC_POSITIONS, True),
    ("52:54:00:*", "52:55:*", globs.MAC_POSITIONS, False),
    ("52:54:00:??:??:??", "52:54:00:*", globs.MAC_POSITIONS, True),
    ("52:54:00:0?:*", "52:54:00:1?:*", globs.MAC_POSITIONS, False),
    ("*a", "b*", None, True),            # "ba"
    ("a*", "b*", None, False),
    ("a?c", "*bc", None, True),
    ("abc", "abd", None, False),
    ("*", "", None, True),
    ("?", "", None, False),
])
def test_glob_overlap(p, q, positions, expected):
    assert globs.overlap(p, q, positions) is expected
    assert globs.overlap(q, p, positions) is expected


def test_glob_match_is_literal_except_star_and_question_mark():
    assert globs.matches("PXEClient:[x]*", "PXEClient:[x]:1")
    assert not globs.matches("PXEClient:[x]*", "PXEClient:x:1")
    assert globs.matches("eth?", "eth1") and not globs.matches("eth?", "eth10")


@pytest.mark.parametrize("raw,norm", [("52-54-00-AB-CD-EF", "52:54:00:ab:cd:ef"), ("525400abcdef", "52:54:00:ab:cd:ef"),
                                      ("5254.00ab.cdef", "52:54:00:ab:cd:ef"), ("52:54:00:ab:cd", None),
                                      ("52:54:00:ab:cd:ef\n", None), ("nonsense", None)])
def test_normalise_mac(raw, norm):
    assert policy.normalise_mac(raw) == norm
