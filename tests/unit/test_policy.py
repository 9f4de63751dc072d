"""Profiles render to valid iPXE scripts; templates leave iPXE's ${...} alone; bad profiles are
ConfigErrors naming the key."""

import re

import pytest

from proxydhcp import config, policy
from proxydhcp.config import ConfigError
from proxydhcp.policy import profiles as P

PROFILES = {
    "debian": {"description": "Debian installer", "kernel": "debian/linux", "initrd": ["debian/initrd.gz"],
               "cmdline": "auto=true url={{ http }}/preseed/{{ mac_hyphen }} console=${console}"},
    "mirror": {"kernel": "http://deb.example/linux", "initrd": "http://deb.example/initrd.gz"},
    "foreman": {"chain": "https://foreman.example/unattended/iPXE?mac={{ mac }}"},
    "iso": {"sanboot": "isos/memtest.iso"},
    "iso-url": {"sanboot": "http://mirror.example/fedora.iso"},
    "local": {"description": "Local disk", "exit": True},
    "hello": {"script": "#!ipxe\necho hello {{ mac }} in {{ group }} rack {{ rack }} ${net0/ip}\nreboot\n"},
    "menu": {"description": "Pick one", "menu": {"items": ["debian", {"profile": "local", "key": "l"},
                                                          {"gap": "-- tools --"}, "tools"],
                                                "default": "local", "timeout": 5}},
    "tools": {"menu": {"title": "Tools", "items": ["iso", "menu"]}},
}
GROUPS = [{"name": "all", "profile": "menu", "metadata": {"rack": "r7"}}]
MAC = "52:54:00:00:00:01"


def render(name, profiles=PROFILES, groups=GROUPS, **machine):
    pol = policy.Policy(profiles, groups)
    m = policy.Machine(mac=MAC, ip="10.0.0.9", **machine)
    d = pol.match(m)
    d.profile = name
    return pol.script(d, pol.variables(m, "10.0.0.2", 8080, "/boot.ipxe", d))


def labels_and_gotos(script):
    labels = set(re.findall(r"^:(\S+)$", script, re.M))
    targets = set(re.findall(r"goto (\S+)", script)) | set(re.findall(r"--default (\S+)", script))
    items = set(re.findall(r"^item (?:--key \S+ )?(proxydhcp-\S+)", script, re.M))
    return labels, targets - {"${proxydhcp_target}"}, items


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_kind_renders_a_script_whose_gotos_all_land(name):
    text = render(name)
    assert text.startswith("#!ipxe\n")
    assert "{{" not in text
    labels, targets, items = labels_and_gotos(text)
    assert targets <= labels and items <= labels, (targets - labels, items - labels)
    assert text.count("#!ipxe") == 1


def test_kernel_profile():
    text = render("debian")
    assert ("kernel http://10.0.0.2:8080/debian/linux auto=true url=http://10.0.0.2:8080/preseed/52-54-00-00-00-01 "
            "console=${console} || goto proxydhcp-failed") in text
    assert "initrd http://10.0.0.2:8080/debian/initrd.gz || goto proxydhcp-failed\nboot || goto proxydhcp-failed" in text
    assert "initrd http://deb.example/initrd.gz" in render("mirror")


def test_chain_sanboot_exit_script():
    assert "chain https://foreman.example/unattended/iPXE?mac=52:54:00:00:00:01 || goto proxydhcp-failed" in render("foreman")
    assert "sanboot --no-describe http://10.0.0.2:8080/isos/memtest.iso ||" in render("iso")
    assert "sanboot --no-describe http://mirror.example/fedora.iso ||" in render("iso-url")
    local = render("local")
    assert local.split(":proxydhcp-failed")[0].rstrip().endswith("exit")
    hello = render("hello")
    assert "echo hello 52:54:00:00:00:01 in all rack r7 ${net0/ip}\nreboot\nexit" in hello


def test_menu_is_one_script_with_a_section_per_reachable_profile():
    text = render("menu")
    assert "goto proxydhcp-menu\n:proxydhcp-menu\nmenu Pick one\n" in text
    assert "item proxydhcp-debian Debian installer" in text
    assert "item --key l proxydhcp-local Local disk" in text
    assert "item --gap -- -- tools --" in text
    assert "choose --default proxydhcp-local --timeout 5000 proxydhcp_target || exit 1\ngoto ${proxydhcp_target}" in text
    # tools -> menu is a cycle: each section exactly once, so "back" works
    for name in ("menu", "debian", "local", "tools", "iso"):
        assert text.count(f":proxydhcp-{name}\n") == 1
    assert ":proxydhcp-foreman" not in text  # not reachable from this menu


def test_text_starting_with_a_dash_is_not_read_as_options_by_ipxe():
    profiles = {"l": {"exit": True}, "m": {"menu": {"title": "-=[ Lab ]=-", "items": ["l"]}}}
    text = render("m", profiles, [{"profile": "m"}])
    assert "\nmenu -- -=[ Lab ]=-\n" in text
    pol = policy.Policy(profiles, [{"profile": "m"}])
    m = policy.Machine(MAC)
    d = pol.match(m)
    vars = pol.variables(m, "10.0.0.2", 8080, "/boot.ipxe", d)
    assert "\necho -- -n is not an option here\n" in pol.script(d, vars, pol.profiles["l"], ("-n is not an option here",))
    assert "\nmenu Pick one\n" in render("menu")      # other text is written as it is


def test_ipxe_syntax_is_untouched():
    assert P.expand("${mac} {{ mac }} {{mac}} ${ {{ ip }} }", {"mac": "M", "ip": "I"}) == "${mac} M M ${ I }"


def test_values_in_urls_are_encoded_but_not_in_cmdlines():
    profiles = {"k": {"kernel": "http://x/{{ os }}/linux", "cmdline": "title={{ os }}"}}
    text = render("k", profiles, [{"profile": "k", "metadata": {"os": "my os"}}])
    assert "kernel http://x/my%20os/linux title=my os" in text


def test_builtin_menu_shows_identity_rule_and_choices():
    pol = policy.Policy({}, [])
    m = policy.Machine(MAC, ip="10.0.0.9", arch=7, uuid="6e65746c-6162-4000-8000-000000000002", firmware="ipxe")
    d = pol.match(m)
    assert d.profile == policy.BUILTIN and "no profiles" in d.why[0]
    text = pol.script(d, pol.variables(m, "10.0.0.2", 8080, "/boot.ipxe", d))
    assert text.startswith("#!ipxe\n")
    assert "MAC 52:54:00:00:00:01  UUID 6e65746c-6162-4000-8000-000000000002  arch x64-uefi  IP 10.0.0.9" in text
    assert "Rule: no profiles are configured" in text
    for item in ("proxydhcp-local", "proxydhcp-shell", "proxydhcp-retry"):
        assert f"{item} (" in text and f":{item}\n" in text
    assert ("chain --replace http://10.0.0.2:8080/boot.ipxe?mac=52:54:00:00:00:01&arch=7"
            "&uuid=6e65746c-6162-4000-8000-000000000002&ip=${netX/ip}") in text
    labels, targets, items = labels_and_gotos(text)
    assert targets <= labels and items <= labels


def test_the_default_config_serves_the_builtin_menu():
    cfg = config.parse(None)
    d = policy.load(cfg).match(policy.Machine(MAC))
    assert d.profile == policy.BUILTIN


def test_no_matching_group_gets_the_builtin_menu_saying_why():
    pol = policy.Policy({"l": {"exit": True}}, [{"profile": "l", "selectors": {"arch": 7}}])
    d = pol.match(policy.Machine(MAC, arch=0))
    assert d.profile == policy.BUILTIN and "no default group" in d.why[0]


@pytest.mark.parametrize("profiles,groups,error", [
    ({"a": {"kernel": "k", "chain": "c"}}, [], "profiles.a: needs exactly one of"),
    ({"a": {}}, [], "profiles.a: needs exactly one of"),
    ({"a": {"exit": True, "cmdline": "x"}}, [], r"unknown key\(s\) cmdline"),
    ({"a b": {"exit": True}}, [], "profile names are letters"),
    ({"a": {"exit": "yes"}}, [], "exit: true"),
    ({"a": {"kernel": "../etc/passwd"}}, [], "may not contain '..'"),
    ({"a": {"chain": "http://x/a b"}}, [], "no spaces"),
    ({"a": {"kernel": "k", "cmdline": "a\nb"}}, [], "one line"),
    ({"m": {"menu": {"items": ["x"]}}}, [], "not a profile"),
    ({"m": {"menu": {"items": ["m"]}}}, [], "cannot list itself"),
    ({"m": {"menu": {"items": []}}}, [], "menu.items"),
    ({"a": {"exit": True}, "m": {"menu": {"items": ["a"], "default": "b"}}}, [], "not one of the items"),
    ({"a": {"exit": True}, "m": {"menu": {"items": ["a"], "timeout": -1}}}, [], "menu.timeout"),
    ({"a": {"exit": True}, "m": {"menu": {"items": ["a"], "timeout": 5}}}, [], "menu.timeout: needs a default"),
    ({"a": {"exit": True}, "m": {"menu": {"items": [{"profile": "a", "key": "ab"}]}}}, [], "one letter"),
    ({"a": {"api": "http://x/"}, "m": {"menu": {"items": ["a"]}}}, [], "must be a local profile"),
    ({"a": {"api": "ftp://x/"}}, [], "api.url"),
    ({"a": {"api": {"url": "http://x/", "timeout": 0}}}, [], "api.timeout"),
    ({"a": {"chain": "http://x/{{ nope }}"}}, [], r"unknown template variable\(s\) \{\{ nope \}\}"),
    ({"builtin-menu": {"exit": True}}, [], "reserved"),
    ({"a": {"exit": True}}, [{"profile": "a", "metadata": {"mac": "x"}}], "built-in template variable"),
    ({"a": {"exit": True}}, [{"profile": "a", "metadata": {"x": "a\nb"}}], "one line"),
])
def test_bad_profiles_are_config_errors(profiles, groups, error):
    with pytest.raises(ConfigError, match=error):
        policy.Policy(profiles, groups)


def test_metadata_defines_template_variables_and_may_set_hostname():
    profiles = {"k": {"kernel": "k", "cmdline": "hostname={{ hostname }} rack={{ rack }}"}}
    text = render("k", profiles, [{"profile": "k", "metadata": {"rack": 3, "hostname": "web1"}}])
    assert "hostname=web1 rack=3" in text


def test_config_parse_validates_policy():
    with pytest.raises(ConfigError, match="not defined"):
        config.parse("groups: [{profile: missing}]")
    with pytest.raises(ConfigError, match="equally specific"):
        config.parse("profiles: {a: {exit: true}}\ngroups: [{profile: a}, {profile: a, name: b}]")


def test_a_path_under_http_root_needs_an_http_root():
    with pytest.raises(ConfigError, match=r"profiles.iso.sanboot: 'isos/x.iso' is a path under http.root, and no http.root"):
        config.parse("profiles: {iso: {sanboot: isos/x.iso}}\ngroups: [{profile: iso}]")
    with pytest.raises(ConfigError, match=r"profiles.k.initrd\[1\]"):
        config.parse("profiles: {k: {kernel: 'http://m/linux', initrd: ['http://m/a', b.img]}}")
    config.parse("profiles: {iso: {sanboot: isos/x.iso}}\nhttp: {root: /srv/netboot}")
    config.parse("profiles: {k: {kernel: 'http://m/linux', initrd: '{{ http }}/initrd'}, c: {chain: 'https://f/x'}}")


def test_example_configs_load_and_explain():
    import glob
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = glob.glob(os.path.join(root, "contrib", "examples", "*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        cfg = config.load(path)
        pol = policy.load(cfg)
        for arch in (0, 7, None):
            m = policy.Machine(MAC, ip="10.9.0.5", arch=arch, firmware="ipxe")
            d = pol.match(m)
            target = d.fallback or d
            text = pol.script(target, pol.variables(m, "10.0.0.2", 8080, "/boot.ipxe", target))
            assert text.startswith("#!ipxe\n") and "{{" not in text


def _example(name):
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return policy.load(config.load(os.path.join(root, "contrib", "examples", name)))


def _script_for(pol, **machine):
    m = policy.Machine(ip="10.9.0.5", **machine)
    d = pol.match(m)
    text = pol.script(d, pol.variables(m, "10.0.0.2", 8080, "/boot.ipxe", d))
    labels, targets, items = labels_and_gotos(text)
    assert text.startswith("#!ipxe\n") and "{{" not in text and targets <= labels and items <= labels
    return d, text


def test_the_seed_setups_are_expressed_by_the_examples():
    """The setups the hand-written PHP served: a menu with Debian netboot, Fedora live, memtest
    and local boot; a chain to Foreman; sanboot of an ISO; an installer straight from a mirror."""
    lab = _example("lab-menu.yaml")
    d, menu = _script_for(lab, mac="52:54:00:77:00:01", arch=0)
    assert d.group_name == "everyone" and d.profile == "main"
    for label, text in (("debian", "Debian 12 installer"), ("fedora-live", "Fedora live"),
                        ("memtest", "Memtest86+"), ("local", "Boot from the local disk")):
        assert re.search(rf"^item (--key \S+ )?proxydhcp-{label} {re.escape(text)}", menu, re.M), label
    assert "choose --default proxydhcp-local --timeout 10000 proxydhcp_target" in menu
    # sanboot of ISOs under http.root (served with Range), by URL on our own HTTP
    assert "sanboot --no-describe http://10.0.0.2:8080/isos/Fedora-Workstation-Live-x86_64.iso ||" in menu
    assert "sanboot --no-describe http://10.0.0.2:8080/isos/memtest86plus.iso ||" in menu
    # an installer straight from the mirror, iPXE's own ${...} left for the machine
    mirror = "http://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/netboot/debian-installer/amd64"
    d, rack = _script_for(lab, mac="52:54:00:01:00:07", arch=0)
    assert d.group_name == "rack1"
    assert (f"kernel {mirror}/linux auto=true priority=critical url=http://10.0.0.2:8080/preseed/rack1.cfg hostname= "
            "netcfg/choose_interface=${net0/mac} || goto proxydhcp-failed") in rack
    assert f"initrd {mirror}/initrd.gz || goto proxydhcp-failed" in rack
    # a chain to Foreman's iPXE template
    d, foreman = _script_for(lab, mac="52:54:00:01:00:10", arch=0)
    assert d.group_name == "web1"
    assert "chain https://foreman.example.com/unattended/iPXE?mac=52:54:00:01:00:10 || goto proxydhcp-failed" in foreman
    # UEFI HTTP boot: the installer from a mirror, by arch name
    d, http_boot = _script_for(_example("uefi-http.yaml"), mac="52:54:00:77:00:02", arch=16, firmware="uefi-http",
                               vendor_class="HTTPClient:Arch:00016:UNDI:003001")
    assert d.group_name == "http-booted" and "kernel http://mirror.example/x64-uefi-http/linux auto=true" in http_boot
