"""The api profile: answers parsed, cache, one call in flight, timeout and pause after failure
(with a fake agent and a fake clock; the real thing over loopback is in tests/integration)."""

import pytest
from twisted.internet import defer, task

from proxydhcp import policy
from proxydhcp.policy import external

SETTINGS = external.parse_settings({"url": "http://api.test/v1/boot/{{ mac }}", "timeout": 2, "cache": 60,
                                    "retry_after": 10}, "profiles.x.api")


@pytest.mark.parametrize("status,body,expect", [
    (200, b'{"profile": "debian"}', ("profile", "debian")),
    (200, b'{"kernel": "http://k", "initrd": ["http://i"], "cmdline": "a=1", "message": "hi"}', ("raw", "http://k")),
    (200, b'{"kernel": "http://k", "cmdline": {"a": 1, "quiet": true}}', ("cmdline", "a=1 quiet")),
    (404, b"", ("none", "no decision")),
    (500, b"", ("none", "HTTP 500")),
    (200, b"not json", ("none", "not JSON")),
    (200, b"[1]", ("none", "not a JSON object")),
    (200, b'{"profile": 3}', ("none", "not a name")),
])
def test_parse_answer(status, body, expect):
    kind, value = expect
    if kind == "none":
        with pytest.raises(external.NoAnswer, match=value):
            external.parse_answer(status, body)
        return
    a = external.parse_answer(status, body)
    if kind == "profile":
        assert a.profile == value
    elif kind == "raw":
        assert a.raw["kernel"] == value and a.message == "hi"
    else:
        assert a.raw["cmdline"] == value


def test_answers_become_scripts_or_fall_back():
    pol = policy.Policy({"cmdb": {"api": SETTINGS["url"]}, "debian": {"kernel": "d/linux"}, "local": {"exit": True},
                         "menu": {"menu": {"items": ["local"]}}},
                        [{"name": "all", "profile": "cmdb"}, {"name": "uefi", "profile": "debian",
                                                             "selectors": {"arch": 7}}])
    m = policy.Machine("52:54:00:00:00:01", arch=0)
    d = pol.match(m)
    assert d.profile == "cmdb" and d.fallback.profile == policy.BUILTIN  # no local default
    assert pol.match(policy.Machine("52:54:00:00:00:01", arch=7)).profile == "debian"  # more specific local group
    v = pol.variables(m, "10.0.0.2", 8080, "/boot.ipxe", d)
    p, notes = pol.from_answer(d, external.Answer(profile="debian"))
    assert "kernel http://10.0.0.2:8080/d/linux" in pol.script(d, v, p, notes)
    p, notes = pol.from_answer(d, external.Answer(raw={"kernel": "http://k/linux", "initrd": ["http://k/i"],
                                                       "cmdline": "x=1"}, message="from cmdb"))
    text = pol.script(d, v, p, notes)
    assert text.startswith("#!ipxe\n") and "echo from cmdb" in text and "kernel http://k/linux x=1" in text
    for bad in (external.Answer(profile="nope"), external.Answer(profile="cmdb"),
                external.Answer(raw={"menu": {"items": ["local"]}}), external.Answer(raw={"kernel": "a", "chain": "b"})):
        with pytest.raises(external.NoAnswer):
            pol.from_answer(d, bad)


class FakeResponse:
    def __init__(self, code, body):
        self.code, self.body, self.length = code, body, len(body)


class FakeAgent:
    def __init__(self):
        self.calls = []

    def request(self, method, url, headers=None):
        d = defer.Deferred()
        self.calls.append((url, d))
        return d


@pytest.fixture
def asker(monkeypatch):
    clock = task.Clock()
    agent = FakeAgent()
    monkeypatch.setattr("twisted.web.client.readBody", lambda response: defer.succeed(response.body))
    a = external.Asker(clock, agent=agent, clock=clock.seconds)
    return a, agent, clock


def results(d):
    out = []
    d.addCallbacks(lambda a: out.append(a), lambda f: out.append(f.value))
    return out


def test_one_call_in_flight_per_url_and_a_cache(asker):
    a, agent, clock = asker
    r1, r2 = results(a.ask(SETTINGS, "http://api.test/1")), results(a.ask(SETTINGS, "http://api.test/1"))
    assert len(agent.calls) == 1 and not r1
    agent.calls[0][1].callback(FakeResponse(200, b'{"profile": "debian"}'))
    assert r1[0].profile == r2[0].profile == "debian"
    assert results(a.ask(SETTINGS, "http://api.test/1"))[0].profile == "debian" and len(agent.calls) == 1
    clock.advance(61)
    a.ask(SETTINGS, "http://api.test/1")
    assert len(agent.calls) == 2


def test_timeout_answers_no_answer_and_pauses_the_api(asker):
    a, agent, clock = asker
    r = results(a.ask(SETTINGS, "http://api.test/1"))
    clock.advance(1.9)
    assert not r
    clock.advance(0.2)
    assert isinstance(r[0], external.NoAnswer) and "within 2 s" in str(r[0])
    # other machines are not made to wait while the API is down
    r = results(a.ask(SETTINGS, "http://api.test/2"))
    assert isinstance(r[0], external.NoAnswer) and "failed recently" in str(r[0]) and len(agent.calls) == 1
    clock.advance(10)
    a.ask(SETTINGS, "http://api.test/2")
    assert len(agent.calls) == 2


def test_404_is_cached_and_500_pauses(asker):
    a, agent, clock = asker
    r = results(a.ask(SETTINGS, "http://api.test/1"))
    agent.calls[0][1].callback(FakeResponse(404, b""))
    assert isinstance(r[0], external.NoAnswer)
    assert isinstance(results(a.ask(SETTINGS, "http://api.test/1"))[0], external.NoAnswer) and len(agent.calls) == 1
    r = results(a.ask(SETTINGS, "http://api.test/2"))
    agent.calls[1][1].callback(FakeResponse(503, b""))
    assert "HTTP 503" in str(r[0])
    assert "failed recently" in str(results(a.ask(SETTINGS, "http://api.test/3"))[0])


def test_connection_refused_is_no_answer(asker):
    a, agent, clock = asker
    r = results(a.ask(SETTINGS, "http://api.test/1"))
    agent.calls[0][1].errback(ConnectionRefusedError("refused"))
    assert isinstance(r[0], external.NoAnswer) and "cannot reach" in str(r[0])
