"""The pure parts of proxydhcp.privileges: capability masks, the decision, the user choice,
/proc status parsing, and which state files are handed over."""

from __future__ import annotations

import os
import pwd

import pytest

from proxydhcp import privileges as pv


def test_mask_of_the_two_kept_capabilities():
    mask = pv.cap_mask(pv.KEEP)
    assert mask == (1 << 10) | (1 << 13) == 0x2400
    assert pv.cap_words(mask) == (0x2400, 0)
    assert pv.caps_in(mask) == {10, 13}


def test_mask_above_32_goes_to_the_second_word():
    mask = pv.cap_mask([0, 31, 32, 40])
    assert pv.cap_words(mask) == ((1 << 31) | 1, (1 << 8) | 1)
    assert pv.caps_in(mask) == {0, 31, 32, 40}
    with pytest.raises(ValueError):
        pv.cap_mask([64])


def test_bounding_set_drops_everything_but_the_two():
    drop = pv.to_drop_from_bounding(40)
    assert len(drop) == 39 and 10 not in drop and 13 not in drop
    assert set(drop) | {10, 13} == set(range(41))


def test_status_caps_parses_proc_status():
    text = ("Name:\tpython3\nUid:\t65534\t65534\t65534\t65534\nCapInh:\t0000000000000000\n"
            "CapPrm:\t0000000000002400\nCapEff:\t0000000000002400\nCapBnd:\t000001ffffffffff\n"
            "CapAmb:\t0000000000000000\n")
    caps = pv.status_caps(text)
    assert caps == {"CapInh": 0, "CapPrm": 0x2400, "CapEff": 0x2400, "CapBnd": 0x1FFFFFFFFFF, "CapAmb": 0}
    assert pv.caps_in(caps["CapEff"]) == {pv.CAP_NET_BIND_SERVICE, pv.CAP_NET_RAW}


def test_decide():
    assert pv.decide(0, True).drop
    assert not pv.decide(0, False).drop and "running as root" in pv.decide(0, False).reason
    plan = pv.decide(998, True)        # systemd User=proxydhcp with ambient capabilities
    assert not plan.drop and "not started as root" in plan.reason


def _getpwnam(known):
    def get(name):
        if name in known:
            return pwd.struct_passwd((name, "x", known[name], known[name], "", "/", "/bin/false"))
        raise KeyError(name)
    return get


def test_choose_user_prefers_proxydhcp_then_nobody():
    assert pv.choose_user(None, _getpwnam({"proxydhcp": 998, "nobody": 65534})).pw_name == "proxydhcp"
    assert pv.choose_user(None, _getpwnam({"nobody": 65534})).pw_name == "nobody"
    assert pv.choose_user("tftp", _getpwnam({"tftp": 120, "nobody": 65534})).pw_uid == 120
    with pytest.raises(pv.PrivilegeError, match=r"run.user 'ghost': no such user: create it"):
        pv.choose_user("ghost", _getpwnam({"nobody": 65534}))
    with pytest.raises(pv.PrivilegeError, match="neither user proxydhcp nor nobody"):
        pv.choose_user(None, _getpwnam({}))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_own_state_gives_our_files_and_never_a_shared_dir(tmp_path):
    state = tmp_path / "state"
    (state / "spool").mkdir(parents=True)
    (state / "events.sqlite").write_bytes(b"")
    (state / "spool" / "1.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.write_text("x")
    (state / "link").symlink_to(outside)
    changed = pv.own_state([str(state), "/tmp", "/"], 65534, 65534)
    assert os.stat(state).st_uid == 65534
    assert os.stat(state / "events.sqlite").st_uid == 65534
    assert os.stat(state / "spool" / "1.json").st_uid == 65534
    assert os.lstat(state / "link").st_uid == 65534 and os.stat(outside).st_uid == 0   # link itself only
    assert os.stat("/tmp").st_uid == 0 and "/tmp" not in changed
