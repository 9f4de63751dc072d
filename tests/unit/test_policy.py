"""Profiles render to iPXE scripts; groups pick the most specific match; bad policy is refused."""

import pytest

from proxydhcp import config, policy
from proxydhcp.config import ConfigError

PROFILES = {
    "debian": {"description": "Debian installer", "kernel": "debian/linux",
               "initrd": ["debian/initrd.gz"], "cmdline": "auto=true url={{ http }}/preseed?mac={{ mac }} console=${console}"},
    "foreman": {"chain": "https://foreman.example/unattended/iPXE?mac={{ mac }}"},
    "iso": {"sanboot": "isos/memtest.iso"},
    "local": {"description": "Local disk", "exit": True},
    "hello": {"script": "#!ipxe\necho hello {{ mac }} in {{ group }} rack {{ rack }} ${net0/ip}\nreboot\n"},
    "menu": {"description": "Pick one", "menu": {"items": ["debian", "local"], "default": "local", "timeout": 5}},
}


def pol(groups, profiles=PROFILES):
    return policy.Policy(profiles, groups)


def script(p, mac="52:54:00:00:00:01", **kw):
    m = policy.Machine(mac=mac, **kw)
    d = p.match(m)
    return policy.render(p, d.profile, policy.variables(m, "10.0.0.2", 8080, d.group), d.why), d


def test_each_profile_kind_renders_a_valid_script():
    p = pol([{"name": "all", "profile": "menu"}])
    v = policy.variables(policy.Machine("52:54:00:00:00:01", ip="10.0.0.9"), "10.0.0.2", 8080, None)
    out = {n: policy.render(p, n, v) for n in PROFILES}
    for text in out.values():
        assert text.startswith("#!ipxe\n")
    assert "kernel http://10.0.0.2:8080/debian/linux auto=true url=http://10.0.0.2:8080/preseed?mac=52:54:00:00:00:01 console=${console}" in out["debian"]
    assert "initrd http://10.0.0.2:8080/debian/initrd.gz\nboot" in out["debian"]
    assert "chain https://foreman.example/unattended/iPXE?mac=52:54:00:00:00:01" in out["foreman"]
    assert "sanboot --no-describe http://10.0.0.2:8080/isos/memtest.iso" in out["iso"]
    assert out["local"].rstrip().endswith("exit 0")
    assert "echo hello 52:54:00:00:00:01" in out["hello"] and "${net0/ip}" in out["hello"]
    assert "choose --default local --timeout 5000 target" in out["menu"]
    assert ":debian\nkernel " in out["menu"] and ":local\nexit 0" in out["menu"]


def test_ipxe_syntax_is_untouched_and_unknown_template_names_stay_visible():
    assert policy.expand("${mac} {{ mac }} {{ nope }}", {"mac": "M"}) == "${mac} M {{ nope }}"


GROUPS = [
    {"name": "default", "profile": "local"},
    {"name": "uefi", "profile": "menu", "selectors": {"arch": ["x64-uefi"]}},
    {"name": "rack1", "profile": "hello", "selectors": {"mac": "52:54:00:01:*"}, "metadata": {"rack": "r1"}},
    {"name": "rack1-uefi", "profile": "foreman", "selectors": {"mac": "52:54:00:01:*", "arch": 7}},
    {"name": "lab", "profile": "debian", "selectors": {"subnet": "10.9.0.0/24", "interface": "eth1"}},
    {"name": "ipxe-users", "profile": "iso", "selectors": {"user_class": "iPXE", "firmware": "ipxe"}},
]


@pytest.mark.parametrize("machine,group", [
    (dict(mac="aa:00:00:00:00:01"), "default"),
    (dict(mac="aa:00:00:00:00:01", arch=7), "uefi"),
    (dict(mac="52:54:00:01:00:05", arch=0), "rack1"),
    (dict(mac="52:54:00:01:00:05", arch=7), "rack1-uefi"),           # 2 selectors beat 1
    (dict(mac="aa:00:00:00:00:01", ip="10.9.0.7", interface="eth1"), "lab"),
    (dict(mac="aa:00:00:00:00:01", ip="10.9.0.7", interface="eth2"), "default"),
    (dict(mac="aa:00:00:00:00:01", user_classes=("iPXE",), firmware="ipxe"), "ipxe-users"),
])
def test_most_specific_group_wins(machine, group):
    p = pol(GROUPS)
    d = p.match(policy.Machine(**machine))
    assert d.group.name == group and d.why


def test_group_metadata_reaches_the_template():
    text, d = script(pol(GROUPS), mac="52:54:00:01:00:05", arch=0)
    assert "in rack1 rack r1" in text


def test_no_default_group_means_no_script():
    d = pol(GROUPS[1:]).match(policy.Machine("aa:00:00:00:00:01"))
    assert d.profile == "" and "no default group" in d.why[0]


def test_builtin_menu_when_no_profiles():
    text, d = script(policy.Policy({}, []), arch=7, uuid="6e65746c-6162-4000-8000-000000000002")
    assert d.profile == "builtin-menu"
    assert "MAC 52:54:00:00:00:01 UUID 6e65746c-6162-4000-8000-000000000002 arch x64-uefi" in text
    for item in ("item local", "item shell", "item retry"):
        assert item in text


@pytest.mark.parametrize("profiles,groups,error", [
    (PROFILES, [{"profile": "local"}, {"profile": "hello"}], "same selectors"),
    (PROFILES, [{"profile": "nope"}], "not defined"),
    (PROFILES, [{"profile": "local", "selectors": {"colour": "red"}}], "unknown selector"),
    (PROFILES, [{"profile": "local", "selectors": {"arch": "z80"}}], "not an arch"),
    (PROFILES, [{"profile": "local", "selectors": {"subnet": "10.0.0.0/33"}}], "groups[0].selectors.subnet"),
    ({"a": {"kernel": "k", "chain": "c"}}, [], "exactly one"),
    ({"m": {"menu": {"items": ["x"]}}}, [], "not a profile"),
    ({"a": {"exit": True}, "m": {"menu": {"items": ["a"], "default": "b"}}}, [], "not one of the items"),
])
def test_bad_policy_is_a_config_error(profiles, groups, error):
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        policy.Policy(profiles, groups)


def test_config_parse_validates_policy():
    with pytest.raises(ConfigError, match="not defined"):
        config.parse("groups: [{profile: missing}]")
