"""Config reload on file change: validate first, keep the old config, count it; explain's report."""

import os

from twisted.internet import task

from proxydhcp import config, metrics
from proxydhcp.cli import main
from proxydhcp.policy.reload import Reloader

GOOD = "profiles: {local: {exit: true}}\ngroups: [{name: all, profile: local}]\n"


def failed_count():
    return metrics.REGISTRY.get_sample_value("proxydhcp_config_reloads_total", {"result": "failed"}) or 0


def test_file_change_reloads_and_a_bad_file_keeps_the_old_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    live = config.LiveConfig(config.load(str(path)), str(path))
    r = Reloader(live, task.Clock())
    first = live.current
    r.check()
    assert live.current is first                       # unchanged file: nothing to do
    os.utime(path, ns=(1, 1))
    r.check()
    assert live.current is first                       # touched, same text: nothing to do
    before = failed_count()
    path.write_text(GOOD + "groups: [{profile: missing}]\n")
    r.check()
    assert live.current is first and "not defined" in live.last_error
    assert failed_count() == before + 1
    assert metrics.REGISTRY.get_sample_value("proxydhcp_config_last_reload_successful") == 0
    r.check()
    assert failed_count() == before + 1                # a bad file is tried once per change
    path.write_text(GOOD.replace("local", "disk"))
    r.check()
    assert live.current is not first and "disk" in live.current.profiles
    assert metrics.REGISTRY.get_sample_value("proxydhcp_config_last_reload_successful") == 1


def test_a_refused_reload_logs_why_and_keeps_serving(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    live = config.LiveConfig(config.load(str(path)), str(path))
    r = Reloader(live, task.Clock())
    first = live.current
    for bad, why in (("profiles: {local: {exit: true}\n", "YAML"),                      # not even YAML
                     (GOOD + "groups: [{name: a, profile: local}, {name: b, profile: local}]\n", "equally specific"),
                     (GOOD.replace("exit: true", "chain: 'http://x/{{ nope }}'"), "unknown template variable")):
        path.write_text(bad)
        caplog.clear()
        with caplog.at_level("INFO", logger="proxydhcp.config"):
            assert r.reload("SIGHUP") is False
        assert live.current is first
        record = caplog.records[-1]
        assert record.levelname == "ERROR" and "SIGHUP" in record.getMessage() and why in record.getMessage()
        assert "keeping the running config" in record.getMessage()
    path.unlink()                                                                       # gone: refused the same way
    assert r.reload("SIGHUP") is False and live.current is first
    path.write_text(GOOD.replace("local", "disk"))
    with caplog.at_level("INFO", logger="proxydhcp.config"):
        assert r.reload("SIGHUP") is True
    assert "disk" in live.current.profiles and caplog.records[-1].levelname == "INFO"


def test_watch_polls_on_the_reactor(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    clock = task.Clock()
    live = config.LiveConfig(config.load(str(path)), str(path))
    r = Reloader(live, clock, interval=1.0)
    r.watch()
    path.write_text(GOOD.replace("local", "disk"))
    clock.advance(1.0)
    assert "disk" in live.current.profiles
    r.stop()


def test_explain_names_the_group_why_and_prints_the_script(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("profiles: {local: {exit: true}, hello: {script: 'echo hi {{ mac }}'}}\n"
                    "groups: [{name: all, profile: local}, {name: lab, profile: hello, "
                    "selectors: {mac: '52:54:00:*', interface: eth1}}]\n")
    assert main(["explain", "-c", str(path), "--mac", "52-54-00-AA-BB-CC", "--arch", "7",
                 "--interface", "eth1", "--server", "10.0.0.2"]) == 0
    out = capsys.readouterr().out
    assert "group:   lab" in out and "profile: hello" in out
    assert "mac 52:54:00:aa:bb:cc matches 52:54:00:*" in out and "interface eth1 matches eth1" in out
    assert "also matched: 'all'" in out
    assert "script:\n#!ipxe\n" in out and "echo hi 52:54:00:aa:bb:cc" in out
    assert main(["explain", "-c", str(path), "--mac", "52:54:00:aa:bb:cc"]) == 0
    out = capsys.readouterr().out
    assert "group:   all" in out and "not matched: 'lab': interface (unknown) does not match eth1" in out


def test_explain_with_no_config_shows_the_builtin_menu(capsys):
    assert main(["explain", "--mac", "52:54:00:aa:bb:cc", "--arch", "0", "--ip", "10.0.0.9"]) == 0
    out = capsys.readouterr().out
    assert "builtin-menu" in out and "MAC 52:54:00:aa:bb:cc" in out and "IP 10.0.0.9" in out


def test_explain_api_profile_falls_back_when_the_api_is_down(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("profiles: {local: {exit: true}, cmdb: {api: {url: 'http://127.0.0.1:9/{{ mac }}', timeout: 0.5}}}\n"
                    "groups: [{name: all, profile: cmdb}, {name: uefi, profile: local, selectors: {arch: 7}}]\n")
    assert main(["explain", "-c", str(path), "--mac", "52:54:00:aa:bb:cc", "--arch", "0"]) == 0
    out = capsys.readouterr().out
    assert "api: cmdb asks http://127.0.0.1:9/52:54:00:aa:bb:cc" in out
    assert "cannot reach the API" in out and "fallback: group (none), profile builtin-menu" in out
