"""The HTTP service (twisted.web): per-machine iPXE scripts, firmware for UEFI HTTP boot,
static files with Range, /metrics and /healthz.

  <boot.script_path>?mac=..&arch=..&uuid=..&ip=..[&hostname=..]   the script iPXE is told to fetch
  /firmware/<name>     the boot files named in boot.firmware only (their symlinks followed)
  /metrics /healthz    Prometheus exposition of proxydhcp.metrics.REGISTRY; liveness
  /<path>              files under http.root (Range, HEAD), never outside it, no listings

What a machine boots is proxydhcp.policy's decision; this module only gathers the machine's
identity (the query, the peer address, and the last DHCP reply the ProxyDHCP sent that MAC,
seen on the event bus) and serves the result. Every request ends in one HTTP_FETCH event
(scrapes of /metrics and /healthz are only counted) and in the HTTP metrics, whose labels
take bounded values. Reads `live.current` per request, so a reload applies at once.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections import OrderedDict

from prometheus_client import exposition
from twisted.application.service import Service
from twisted.web import pages, resource, server, static

from proxydhcp import metrics, policy
from proxydhcp.config import ConfigError, LiveConfig
from proxydhcp.events import DHCP_REPLY, HTTP_FETCH, EventBus
from proxydhcp.policy import external

log = logging.getLogger("proxydhcp.http")
KINDS = ("script", "file", "firmware", "metrics", "health", "api", "other")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_CODES = frozenset((200, 206, 301, 302, 304, 400, 403, 404, 405, 416, 500, 503))


class MachineRegistry:
    """The last DHCP_REPLY per MAC (bounded, oldest forgotten first): the selectors a URL
    does not carry (interface, vendor and user classes, firmware kind)."""

    def __init__(self, size: int = 50000) -> None:
        self.size = size
        self.by_mac: OrderedDict[str, dict] = OrderedDict()

    def observe(self, event: dict) -> None:
        if event.get("kind") != DHCP_REPLY or not event.get("mac"):
            return
        self.by_mac[event["mac"]] = event
        self.by_mac.move_to_end(event["mac"])
        while len(self.by_mac) > self.size:
            self.by_mac.popitem(last=False)

    def mac_for_ip(self, ip: str) -> str | None:
        for mac in reversed(self.by_mac):
            if self.by_mac[mac].get("client_ip") == ip:
                return mac
        return None


def _ipv4(text) -> str | None:
    try:
        return str(ipaddress.IPv4Address(text))
    except (ValueError, TypeError):
        return None


def machine_from(args: dict, peer_ip: str | None, registry: MachineRegistry) -> policy.Machine | None:
    """The machine a script request describes, or None without a valid MAC. Every value that
    reaches a script is validated here: a bad uuid, ip, arch or hostname is dropped."""
    mac = policy.normalise_mac(args.get("mac", ""))
    if mac is None:
        return None
    seen = registry.by_mac.get(mac, {})
    arch = args.get("arch", "")
    arch_code = int(arch) if arch.isdigit() and len(arch) <= 5 else seen.get("arch")
    uuid = policy.normalise_uuid(args["uuid"]) if args.get("uuid") else None
    hostname = args.get("hostname")
    return policy.Machine(
        mac=mac, ip=_ipv4(args.get("ip")) or _ipv4(peer_ip), uuid=uuid or seen.get("uuid"),
        arch=arch_code if isinstance(arch_code, int) else None,
        firmware=seen.get("firmware"), interface=seen.get("iface"), vendor_class=seen.get("vendor_class"),
        user_classes=tuple(seen.get("user_classes") or ()),
        hostname=hostname if hostname and _HOSTNAME.match(hostname) else None)


def _mark(request, kind: str) -> None:
    if not hasattr(request, "proxydhcp_kind"):
        request.proxydhcp_kind = kind


class _ApiIndex(resource.Resource):
    """/api itself: a 404 naming what is there (a bare Resource answers HEAD with a 500: its
    default render_HEAD calls a render_GET it does not have)."""

    def render_GET(self, request):
        _mark(request, "api")
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"application/json")
        return b'{"error": "see /api/sessions"}\n'


class _Text(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, kind: str) -> None:
        super().__init__()
        self.body, self.kind = body, kind

    def render_GET(self, request):
        _mark(request, self.kind)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return self.body


class BootScript(resource.Resource):
    """The per-machine iPXE script. Answers at once from local groups; an `api` profile
    waits for the API at most its timeout, then falls back to the local groups."""
    isLeaf = True

    def __init__(self, service: "HTTPService") -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request):
        _mark(request, "script")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        args = {k.decode("latin-1"): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v}
        m = machine_from(args, request.getClientAddress().host, self.service.registry)
        if m is None:
            request.setResponseCode(400)
            return b"#!ipxe\necho proxydhcp: the script URL needs ?mac=aa:bb:cc:dd:ee:ff\nexit 1\n"
        request.proxydhcp_mac = m.mac
        cfg = self.service.live.current
        pol = self.service.policy
        server_ip = cfg.dhcp.server_address or request.getHost().host
        d = pol.match(m)

        def vars_for(decision):
            return pol.variables(m, server_ip, self.service.http_port, cfg.boot.script_path, decision)

        settings = pol.api_settings(d)
        if settings is None:
            return self._done(request, pol.script(d, vars_for(d)), d.profile, d.group_name)
        url = policy.expand(settings["url"], vars_for(d), in_url=True)
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answered(answer):
            profile, notes = pol.from_answer(d, answer)
            return pol.script(d, vars_for(d), profile, notes), answer.profile or d.profile, d.group_name

        def fallback(failure):
            why = failure.getErrorMessage() if failure.check(external.NoAnswer) else repr(failure.value)
            if not failure.check(external.NoAnswer):
                log.error("api profile %s: %s", d.profile, failure.getTraceback())
            log.info("%s: api profile %s gave no decision (%s); local groups decide", m.mac, d.profile, why)
            fb = d.fallback
            return pol.script(fb, vars_for(fb)), fb.profile, fb.group_name

        def send(result):
            if not gone:
                request.write(self._done(request, *result))
                request.finish()

        self.service.asker.ask(settings, url).addCallback(answered).addErrback(fallback).addCallback(send)
        return server.NOT_DONE_YET

    @staticmethod
    def _done(request, script: str, profile: str, group: str | None) -> bytes:
        request.proxydhcp_profile, request.proxydhcp_group = profile, group
        body = script.encode("utf-8")
        request.setHeader(b"content-length", str(len(body)).encode())
        return body


class _File(static.File):
    """static.File, but a Range header it would answer with a 500 is ignored like any
    malformed one (RFC 9110 14.2: the whole file, 200): one that is not ASCII (static.File
    decodes it as UTF-8 to log it) or names no range at all (`bytes=`, `bytes=,`)."""

    def render_GET(self, request):
        byte_range = request.getHeader(b"range")
        if byte_range is not None:
            try:
                usable = byte_range.isascii() and bool(self._parseRangeHeader(byte_range))
            except ValueError:
                usable = True   # static.File ignores it itself (and logs it)
            if not usable:
                request.requestHeaders.removeHeader(b"range")
        return super().render_GET(request)

    render_HEAD = render_GET


class ConfinedFile(_File):
    """static.File (Range, HEAD, content types) that refuses any path resolving outside its
    root (`..`, encoded slashes, symlinks leading out) and lists no directories."""

    def __init__(self, path: str, root: str | None = None, **kw) -> None:
        super().__init__(path, **kw)
        self.confine_to = os.path.realpath(root or path)

    def getChild(self, path, request):
        _mark(request, "file")
        if b"\x00" in path or b"\\" in path or b"/" in path or path in (b"..", b"."):
            return pages.forbidden(message="refused")
        try:
            path.decode("utf-8")    # static.File would log a traceback for a name that is not UTF-8
        except UnicodeDecodeError:
            return pages.notFound(message="not a UTF-8 file name")
        child = super().getChild(path, request)
        if isinstance(child, static.File):
            real = os.path.realpath(child.path)
            if real != self.confine_to and not real.startswith(self.confine_to + os.sep):
                return pages.forbidden(message="outside the HTTP root")
        return child

    def directoryListing(self):
        return pages.forbidden(message="no directory listings")

    def createSimilarFile(self, path):
        f = ConfinedFile(path, self.confine_to, defaultType=self.defaultType)
        f.indexNames = []
        return f


class Firmware(resource.Resource):
    """/firmware/<name>: only the boot files the config names, served wherever their links lead."""

    def __init__(self, service: "HTTPService") -> None:
        super().__init__()
        self.service = service

    def getChild(self, name, request):
        _mark(request, "firmware")
        path = self.service.firmware_files().get(name.decode("utf-8", "replace"))
        if path is None or request.postpath or not os.path.isfile(path):
            return pages.notFound(message="not a configured boot file")
        f = _File(path, defaultType="application/octet-stream")
        f.isLeaf = True
        return f

    def render_GET(self, request):
        _mark(request, "firmware")
        return pages.notFound(message="name a configured boot file").render(request)


class Metrics(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        _mark(request, "metrics")
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, ctype = exposition.choose_encoder(accept)
        request.setHeader(b"content-type", ctype.encode())
        return encoder(metrics.REGISTRY)


class Root(resource.Resource):
    def __init__(self, service: "HTTPService") -> None:
        super().__init__()
        self.service = service
        self.putChild(b"metrics", Metrics())
        self.putChild(b"healthz", _Text(b"ok\n", "health"))
        self.putChild(b"firmware", Firmware(service))
        from proxydhcp.web.api import Sessions
        api = _ApiIndex()
        api.putChild(b"sessions", Sessions(lambda: service.live.current.state.dir))
        self.putChild(b"api", api)

    def getChildWithDefault(self, name, request):
        cfg = self.service.live.current
        if request.path == cfg.boot.script_path.encode():  # configurable, so not a putChild
            return self.service.boot_script
        return super().getChildWithDefault(name, request)

    def getChild(self, name, request):
        root = self.service.live.current.http.root
        if root:
            return ConfinedFile(root).getChild(name, request)
        _mark(request, "other")
        return pages.notFound(message="no http.root is configured")

    def render_GET(self, request):
        _mark(request, "other")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"proxydhcp\n"


class _Request(server.Request):
    started = 0.0

    def process(self):
        self.started = time.monotonic()
        service = self.channel.site.service  # connectionLost clears self.channel before the errback
        service.in_flight += 1                # until service.finished (graceful stop waits on it)
        self.proxydhcp_counted = True
        self.notifyFinish().addErrback(lambda _: service.finished(self, aborted=True))
        return super().process()


class _Site(server.Site):
    def __init__(self, service: "HTTPService", root) -> None:
        super().__init__(root, requestFactory=_Request)
        self.service = service
        self.noisy = False
        self.displayTracebacks = False

    def log(self, request) -> None:  # called once per completed request
        self.service.finished(request)


class HTTPService(Service):
    name = "http"

    def __init__(self, live: LiveConfig, bus: EventBus, reactor=None) -> None:
        self.live, self.bus = live, bus
        self._reactor = reactor
        self.registry = MachineRegistry()
        bus.subscribe(self.registry.observe)
        self._policy_for = self._policy = None
        self.boot_script = BootScript(self)
        self.port = None
        self.bound_port = None
        self.asker = None
        self.in_flight = 0

    @property
    def http_port(self) -> int:
        """The port scripts name: the bound one (http.port 0 picks a free port)."""
        return self.bound_port or self.live.current.http.port

    @property
    def policy(self) -> policy.Policy:
        """The running config's policy (config.parse validated it; built once per config)."""
        cfg = self.live.current
        if self._policy_for is not cfg:
            self._policy = policy.load(cfg)
            self._policy_for = cfg
        return self._policy

    def firmware_files(self) -> dict[str, str]:
        """URL name (the base name, as responder.firmware_url hands it out) -> path of each
        configured boot file, quirk firmware included: the TFTP server's list."""
        from proxydhcp.tftp.files import boot_files
        out: dict[str, str] = {}
        for name, path in boot_files(self.live.current).items():
            out.setdefault(os.path.basename(name), path)
        return out

    def startService(self) -> None:
        from twisted.internet import reactor as default_reactor
        from twisted.internet.error import CannotListenError

        from proxydhcp.service import StartupError
        reactor = self._reactor or default_reactor
        cfg = self.live.current
        try:
            self.policy  # noqa: B018  (validated by config.parse already; cheap to be sure)
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        if cfg.http.root and not os.access(cfg.http.root, os.R_OK | os.X_OK):
            raise StartupError(f"http.root {cfg.http.root} is not a readable directory: fix the path or permissions")
        self.asker = external.Asker(reactor)
        site = _Site(self, Root(self))
        try:
            self.port = reactor.listenTCP(cfg.http.port, site)
        except CannotListenError as exc:
            import errno
            if getattr(exc.socketError, "errno", None) == errno.EADDRINUSE:
                raise StartupError(f"TCP port {cfg.http.port} (http.port) is in use by another program: "
                                   f"stop it or set http.port (or http.enabled: false)") from None
            raise StartupError(f"cannot listen on TCP port {cfg.http.port} (http.port): "
                               f"{getattr(exc.socketError, 'strerror', None) or exc.socketError}; "
                               f"set http.port") from None
        self.bound_port = self.port.getHost().port
        log.info("HTTP listening on port %d (script %s)", self.bound_port, cfg.boot.script_path)
        Service.startService(self)

    def stopService(self):
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()

    def stop_accepting(self):
        """Graceful stop: close the listening port; responses under way go on (in_flight)."""
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

    def finished(self, request, aborted: bool = False) -> None:
        if getattr(request, "proxydhcp_done", False):
            return
        request.proxydhcp_done = True
        if getattr(request, "proxydhcp_counted", False):
            self.in_flight -= 1
        kind = getattr(request, "proxydhcp_kind", "other")
        code = "aborted" if aborted else str(request.code) if request.code in _CODES else "other"
        duration = time.monotonic() - request.started if request.started else 0.0
        metrics.HTTP_REQUESTS.labels(kind, code).inc()
        metrics.HTTP_TRANSFER_DURATION.labels(kind).observe(duration)
        if kind in ("metrics", "health", "api"):
            return
        peer = request.getClientAddress().host
        mac = getattr(request, "proxydhcp_mac", None) or self.registry.mac_for_ip(peer)
        fields = dict(mac=mac, client_ip=peer, path=request.path.decode("latin-1")[:512], fetch=kind,
                      code=request.code, bytes=request.sentLength, duration=round(duration, 6),
                      profile=getattr(request, "proxydhcp_profile", None),
                      group=getattr(request, "proxydhcp_group", None))
        if aborted:
            fields["aborted"] = True
        self.bus.emit(HTTP_FETCH, **fields)
