"""External boot decisions (Pixiecore's API mode): a profile of kind `api` asks a URL what a
machine should boot.

  profiles:
    cmdb:
      api:
        url: "http://cmdb.example:8000/v1/boot/{{ mac }}"   # template, like every profile
        timeout: 2        # seconds to wait for the answer
        cache: 60         # seconds an answer (or a 404) is reused for that machine
        retry_after: 10   # seconds the API is left alone after it failed or timed out

The API answers with JSON:
  {"profile": "debian"}                                     a local profile by name, or
  {"kernel": URL, "initrd": [URL, ...], "cmdline": "...", "message": "..."}   (Pixiecore), or
  any one-kind profile body: {"chain": URL}, {"sanboot": URL}, {"exit": true}, {"script": "..."}
HTTP 404 means "no opinion"; that, an error, a timeout or a bad answer fall back to the local
groups (the decision made without `api` groups).

Only the HTTP script request waits for the API, and at most `timeout`: the DHCP side never
asks it. Concurrent requests for one URL share one API call. `Asker` does the asking with
Twisted's non-blocking client; `ask_blocking` is for `proxydhcp explain`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict

from proxydhcp.config import ConfigError

log = logging.getLogger("proxydhcp.policy.api")
CACHE_SIZE = 20000
MAX_ANSWER = 256 * 1024


def parse_settings(raw, where: str) -> dict:
    if isinstance(raw, str):
        raw = {"url": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a URL or a mapping with url, timeout, cache, retry_after")
    extra = set(raw) - {"url", "timeout", "cache", "retry_after"}
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, extra)))}; "
                          f"allowed: url, timeout, cache, retry_after")
    url = raw.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url: an http:// or https:// URL, got {url!r}")
    out = {"url": url}
    for key, default, low, high in (("timeout", 2.0, 0.05, 30.0), ("cache", 60.0, 0.0, 86400.0),
                                    ("retry_after", 10.0, 0.0, 3600.0)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"{where}.{key}: seconds between {low:g} and {high:g}, got {value!r}")
        out[key] = float(value)
    return out


class Answer:
    """What the API said: `profile` names a local profile, or `raw` is a one-off profile body."""

    def __init__(self, profile: str | None = None, raw: dict | None = None, message: str | None = None) -> None:
        self.profile, self.raw, self.message = profile, raw, message

    def __repr__(self) -> str:
        return f"Answer(profile={self.profile!r}, raw={self.raw!r})"


class NoAnswer(Exception):
    """The API gave no usable decision; the message says why (for logs and explain).
    `final`: a real answer ("no opinion", 404) that is cached like a decision;
    `api_down`: the API is failing (5xx, unreachable, too slow) and is left alone a while."""

    def __init__(self, why: str, final: bool = False, api_down: bool = False) -> None:
        super().__init__(why)
        self.final, self.api_down = final, api_down


def parse_answer(status: int, body: bytes) -> Answer:
    """Pure: HTTP status and body -> Answer, or NoAnswer."""
    if status == 404:
        raise NoAnswer("the API has no decision for this machine (404)", final=True)
    if status != 200:
        raise NoAnswer(f"the API answered HTTP {status}", api_down=status >= 500)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise NoAnswer(f"the API answer is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NoAnswer("the API answer is not a JSON object")
    message = data.pop("message", None)
    if message is not None and not isinstance(message, str):
        raise NoAnswer("the API answer's message is not a string")
    if "profile" in data:
        if not isinstance(data["profile"], str):
            raise NoAnswer("the API answer's profile is not a name")
        return Answer(profile=data["profile"], message=message)
    if isinstance(data.get("cmdline"), dict):  # older Pixiecore: {"key": "value", "flag": true}
        data["cmdline"] = " ".join(k if v is True else f"{k}={v}" for k, v in data["cmdline"].items())
    return Answer(raw=data, message=message)


class Asker:
    """Asks APIs without blocking: a per-URL cache, one call in flight per URL, a timeout,
    and a pause after a failure so a dead API costs at most one timeout per `retry_after`."""

    def __init__(self, reactor, agent=None, clock=time.monotonic) -> None:
        from twisted.web.client import Agent
        self.reactor = reactor
        self.agent = agent or Agent(reactor)
        self.clock = clock
        self.cache: OrderedDict[str, tuple[float, object]] = OrderedDict()  # url -> (expires, Answer | NoAnswer)
        self.inflight: dict[str, list] = {}
        self.down_until: dict[str, float] = {}  # API base (settings url) -> time

    def ask(self, settings: dict, url: str):
        """Deferred firing with an Answer or failing with NoAnswer; never slower than the timeout."""
        from twisted.internet import defer
        now = self.clock()
        hit = self.cache.get(url)
        if hit and hit[0] > now:
            return defer.succeed(hit[1]) if isinstance(hit[1], Answer) else defer.fail(hit[1])
        if self.down_until.get(settings["url"], 0) > now:
            return defer.fail(NoAnswer(f"the API failed recently; not asked again for "
                                       f"{self.down_until[settings['url']] - now:.0f} s"))
        waiting = defer.Deferred()
        if url in self.inflight:
            self.inflight[url].append(waiting)
            return waiting
        self.inflight[url] = [waiting]
        self._call(settings, url).addBoth(self._done, settings, url)
        return waiting

    def _call(self, settings: dict, url: str):
        from twisted.internet import defer
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        @defer.inlineCallbacks
        def call():
            response = yield self.agent.request(b"GET", url.encode("ascii", "replace"),
                                                Headers({b"accept": [b"application/json"],
                                                         b"user-agent": [b"proxydhcp"]}))
            if response.length is not None and response.length != -1 and response.length > MAX_ANSWER:
                response.deliverBody(_Discard())
                raise NoAnswer(f"the API answer is too large ({response.length} bytes)")
            body = yield readBody(response)
            return parse_answer(response.code, body[:MAX_ANSWER])

        d = call()
        d.addTimeout(settings["timeout"], self.reactor)
        return d

    def _done(self, result, settings: dict, url: str) -> None:
        from twisted.internet.defer import TimeoutError as DeferTimeout
        from twisted.python.failure import Failure
        now = self.clock()
        outcome = result
        if isinstance(result, Failure):
            if result.check(NoAnswer):
                outcome = result.value
            else:
                why = (f"no answer within {settings['timeout']:g} s" if result.check(DeferTimeout)
                       else f"cannot reach the API: {result.getErrorMessage()}")
                outcome = NoAnswer(why, api_down=True)
            if outcome.api_down:
                self._down(settings, now)
        if isinstance(outcome, Answer) or outcome.final:
            self._store(url, now + settings["cache"], outcome)
        for d in self.inflight.pop(url, []):
            if isinstance(outcome, Answer):
                d.callback(outcome)
            else:
                d.errback(outcome)

    def _down(self, settings: dict, now: float) -> None:
        if settings["retry_after"] > 0:
            self.down_until[settings["url"]] = now + settings["retry_after"]

    def _store(self, url: str, expires: float, value) -> None:
        self.cache[url] = (expires, value)
        self.cache.move_to_end(url)
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)


class _Discard:
    """A body consumer that drops everything (for answers we refuse by size)."""

    def makeConnection(self, transport):
        transport.stopProducing()

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


def ask_blocking(settings: dict, url: str) -> Answer:
    """For the CLI: the same question with urllib (raises NoAnswer)."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers={"accept": "application/json", "user-agent": "proxydhcp"})
    try:
        with urllib.request.urlopen(req, timeout=settings["timeout"]) as r:
            return parse_answer(r.status, r.read(MAX_ANSWER))
    except urllib.error.HTTPError as exc:
        return parse_answer(exc.code, b"")
    except (OSError, ValueError) as exc:
        raise NoAnswer(f"cannot reach the API: {exc}", api_down=True) from None
