"""The HTTP service (twisted.web): per-machine iPXE scripts, firmware for UEFI HTTP boot,
static files with Range, /metrics and /healthz.

  /boot.ipxe?mac=..&arch=..&uuid=..[&ip=..]   the script the ProxyDHCP hands to iPXE
  /firmware/<name>                            configured boot files only (their links followed)
  /<path>                                     files under http.root, never outside it
  /metrics  /healthz  /api/sessions[/<mac>]

Machine identity beyond the query (interface, vendor and user classes, firmware kind) comes
from the ProxyDHCP's DHCP_REPLY events on the bus. Every request emits HTTP_FETCH.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict

from prometheus_client import exposition
from twisted.application.service import Service
from twisted.web import resource, server, static

from proxydhcp import metrics, policy
from proxydhcp.config import ConfigError, LiveConfig
from proxydhcp.events import DHCP_REPLY, HTTP_FETCH, EventBus

log = logging.getLogger("proxydhcp.http")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
KINDS = ("script", "file", "firmware", "metrics", "health", "api", "other")


class MachineRegistry:
    """Last DHCP_REPLY per MAC (bounded), for the selectors a URL does not carry."""

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


def machine_from(args: dict, peer_ip: str | None, registry: MachineRegistry) -> policy.Machine:
    mac = args.get("mac", "").lower().replace("-", ":")
    seen = registry.by_mac.get(mac, {})
    arch = args.get("arch")
    return policy.Machine(
        mac=mac, ip=args.get("ip") or peer_ip, uuid=args.get("uuid") or seen.get("uuid"),
        arch=int(arch) if arch and arch.isdigit() else seen.get("arch"),
        firmware=seen.get("firmware"), interface=seen.get("iface"), vendor_class=seen.get("vendor_class"),
        user_classes=tuple(seen.get("user_classes") or ()))


class _Text(resource.Resource):
    isLeaf = True

    def __init__(self, body: bytes, ctype: bytes = b"text/plain; charset=utf-8") -> None:
        super().__init__()
        self.body, self.ctype = body, ctype

    def render_GET(self, request):
        request.setHeader(b"content-type", self.ctype)
        return self.body


class BootScript(resource.Resource):
    isLeaf = True

    def __init__(self, service: "HTTPService") -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request):
        args = {k.decode("latin-1"): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v}
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        m = machine_from(args, request.getClientAddress().host, self.service.registry)
        if not _MAC.match(m.mac):
            request.setResponseCode(400)
            return b"#!ipxe\necho proxydhcp: /boot.ipxe needs ?mac=aa:bb:cc:dd:ee:ff\nexit 1\n"
        script, decision = self.service.script_for(m, request.getHost().host)
        request.proxydhcp_mac = m.mac
        request.proxydhcp_profile = decision.profile
        request.proxydhcp_group = decision.group.name if decision.group else None
        if script is None:
            request.setResponseCode(404)
            return (f"#!ipxe\necho proxydhcp: no profile for {m.mac}: {'; '.join(decision.why)}\nexit 1\n").encode()
        return script.encode()


class ConfinedFile(static.File):
    """static.File (Range, HEAD, content types) that refuses any path resolving outside its root."""

    def __init__(self, path: str, root: str | None = None, **kw) -> None:
        super().__init__(path, **kw)
        self.confine_to = os.path.realpath(root or path)

    def getChild(self, path, request):
        if b"\x00" in path or b"\\" in path:
            return resource.NoResource("refused")
        child = super().getChild(path, request)
        if isinstance(child, static.File):
            real = os.path.realpath(child.path)
            if real != self.confine_to and not real.startswith(self.confine_to + os.sep):
                return resource.ForbiddenResource("outside the HTTP root")
        return child

    def createSimilarFile(self, path):
        f = ConfinedFile(path, self.confine_to, defaultType=self.defaultType)
        f.processors, f.indexNames = self.processors, self.indexNames[:]
        f.childNotFound = self.childNotFound
        return f


class Firmware(resource.Resource):
    """/firmware/<name>: only the boot files the config names, served wherever their links lead."""

    def __init__(self, service: "HTTPService") -> None:
        super().__init__()
        self.service = service

    def getChild(self, name, request):
        path = self.service.firmware_files().get(name.decode("utf-8", "replace"))
        if path is None:
            return resource.NoResource("not a configured boot file")
        return static.File(path, defaultType="application/octet-stream")


class Metrics(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        encoder, ctype = exposition.choose_encoder(request.getHeader(b"accept") or "")
        request.setHeader(b"content-type", ctype.encode())
        return encoder(metrics.REGISTRY)


class ApiSessions(resource.Resource):
    """/api/sessions[?failed=1&limit=N] and /api/sessions/<mac>: boot sessions as JSON, read
    from the event store in a thread (never on the reactor)."""

    isLeaf = True

    def __init__(self, service: "HTTPService") -> None:
        super().__init__()
        self.service = service

    def render_GET(self, request):
        import json

        from twisted.internet import threads
        from proxydhcp.events.store import Reader, StoreError, db_path

        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        mac = parts[0].lower().replace("-", ":") if parts else None
        if mac is not None and not _MAC.match(mac):
            request.setResponseCode(400)
            return b'{"error": "expected /api/sessions/aa:bb:cc:dd:ee:ff"}\n'
        failed = request.args.get(b"failed", [b""])[0] in (b"1", b"true", b"yes")
        try:
            limit = max(1, min(1000, int(request.args.get(b"limit", [b"50"])[0])))
        except ValueError:
            limit = 50
        path = db_path(self.service.live.current.state.dir)

        def query():
            reader = Reader(path)
            try:
                return reader.sessions(mac=mac, failed=failed, limit=limit)
            finally:
                reader.close()

        def done(rows):
            request.setHeader(b"content-type", b"application/json")
            if mac is not None and not rows:
                request.setResponseCode(404)
                rows = {"error": f"no session for {mac}"}
            request.write(json.dumps(rows if mac is None or isinstance(rows, dict) else rows[0],
                                     default=str).encode() + b"\n")
            request.finish()

        def failed_query(f):
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"error": f"event store unavailable: {f.getErrorMessage()}"}).encode() + b"\n")
            request.finish()

        d = threads.deferToThread(query)
        d.addCallbacks(done, failed_query)
        return server.NOT_DONE_YET


class Root(resource.Resource):
    def __init__(self, service: "HTTPService") -> None:
        super().__init__()
        self.service = service
        self.putChild(b"metrics", Metrics())
        self.putChild(b"healthz", _Text(b"ok\n"))
        self.putChild(b"firmware", Firmware(service))
        api = resource.Resource()
        api.putChild(b"sessions", ApiSessions(service))
        self.putChild(b"api", api)

    def getChild(self, name, request):
        cfg = self.service.live.current
        if request.path == cfg.boot.script_path.encode():
            return self.service.boot_script
        if cfg.http.root:
            return ConfinedFile(cfg.http.root).getChild(name, request)
        return resource.NoResource()


def kind_of(path: bytes, script_path: bytes) -> str:
    if path == script_path:
        return "script"
    if path.startswith(b"/firmware/"):
        return "firmware"
    if path == b"/metrics":
        return "metrics"
    if path == b"/healthz":
        return "health"
    if path.startswith(b"/api/"):
        return "api"
    return "file"


class _Request(server.Request):
    def process(self):
        self.started = time.time()
        return super().process()


class _Site(server.Site):
    requestFactory = _Request

    def __init__(self, service: "HTTPService", root) -> None:
        super().__init__(root, requestFactory=_Request)
        self.service = service
        self.noisy = False

    def log(self, request) -> None:  # called once per finished request
        self.service.finished(request)


class HTTPService(Service):
    name = "http"

    def __init__(self, live: LiveConfig, bus: EventBus, reactor=None) -> None:
        self.live, self.bus = live, bus
        self._reactor = reactor
        self.registry = MachineRegistry()
        bus.subscribe(self.registry.observe)
        self._policy_for = None
        self._policy = None
        self.boot_script = BootScript(self)
        self.port = None
        live.subscribe(lambda cfg: policy.load(cfg))  # a reload with a bad policy is refused

    @property
    def policy(self) -> policy.Policy:
        cfg = self.live.current
        if self._policy_for is not cfg:
            self._policy = policy.load(cfg)
            self._policy_for = cfg
        return self._policy

    def script_for(self, m: policy.Machine, local_ip: str):
        """(script, decision); script is None when no group matches and there is no default."""
        cfg = self.live.current
        pol = self.policy
        decision = pol.match(m)
        if not decision.profile:
            return None, decision
        server_ip = cfg.dhcp.server_address or local_ip
        vars = policy.variables(m, server_ip, cfg.http.port, decision.group)
        return policy.render(pol, decision.profile, vars, decision.why), decision

    def firmware_files(self) -> dict[str, str]:
        cfg = self.live.current
        out = {}
        for path in cfg.boot.firmware.values():
            full = path if path.startswith("/") else os.path.join(cfg.tftp.root, path)
            out[os.path.basename(path)] = full
        return out

    def startService(self) -> None:
        from twisted.internet import reactor as default_reactor
        from twisted.internet.error import CannotListenError
        from proxydhcp.service import StartupError
        reactor = self._reactor or default_reactor
        cfg = self.live.current
        try:
            self.policy  # noqa: B018  validate once at start
        except ConfigError as exc:
            raise StartupError(str(exc)) from None
        if cfg.http.root and not os.access(cfg.http.root, os.R_OK | os.X_OK):
            raise StartupError(f"http.root {cfg.http.root} is not a readable directory: fix the path or permissions")
        site = _Site(self, Root(self))
        try:
            self.port = reactor.listenTCP(cfg.http.port, site)
        except CannotListenError as exc:
            raise StartupError(f"TCP port {cfg.http.port} (http.port) is in use or not allowed: {exc.socketError}; "
                               f"stop the other program or set http.port") from None
        self.bound_port = self.port.getHost().port
        log.info("HTTP listening on port %d (script %s)", self.bound_port, cfg.boot.script_path)
        Service.startService(self)

    def stopService(self):
        Service.stopService(self)
        if self.port is not None:
            return self.port.stopListening()

    def finished(self, request) -> None:
        cfg = self.live.current
        kind = kind_of(request.path, cfg.boot.script_path.encode())
        code = str(request.code)
        duration = time.time() - request.started if hasattr(request, "started") else 0.0
        metrics.HTTP_REQUESTS.labels(kind, code).inc()
        metrics.HTTP_TRANSFER_DURATION.labels(kind).observe(duration)
        if kind in ("metrics", "health", "api"):
            return
        mac = getattr(request, "proxydhcp_mac", None)
        peer = request.getClientAddress().host
        if mac is None:
            mac = self._mac_for_ip(peer)
        self.bus.emit(HTTP_FETCH, mac=mac, client_ip=peer, path=request.path.decode("latin-1"), fetch=kind,
                      code=request.code, bytes=request.sentLength, duration=duration,
                      profile=getattr(request, "proxydhcp_profile", None),
                      group=getattr(request, "proxydhcp_group", None))

    def _mac_for_ip(self, ip: str):
        for mac, e in reversed(self.registry.by_mac.items()):
            if e.get("client_ip") == ip:
                return mac
        return None
