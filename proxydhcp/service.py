"""Composition: builds the running daemon from a Config (DHCP, TFTP, HTTP services sharing
one event bus) as a Twisted MultiService. Owns wiring only, no protocol logic."""

from __future__ import annotations

import logging
import os

from twisted.application.service import MultiService

from proxydhcp.config import LiveConfig
from proxydhcp.events import EventBus

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The daemon cannot start; the message says what to fix, in one line."""


def build(live: LiveConfig, bus: EventBus | None = None) -> MultiService:
    """Each service takes (live, bus): it reads live.current per request and emits on bus.
    startService raises StartupError (one line naming the fix) when it cannot run."""
    bus = bus or EventBus()
    top = MultiService()
    top.bus = bus
    top.live = live
    cfg = live.current

    if cfg.events.enabled:  # first: it subscribes before anything emits
        from proxydhcp.events.service import EventsService
        EventsService(live, bus).setServiceParent(top)
    from proxydhcp.net.dhcp_service import DHCPService
    DHCPService(live, bus).setServiceParent(top)
    if cfg.tftp.enabled:
        from proxydhcp.tftp.server import TFTPService
        TFTPService(live, bus).setServiceParent(top)
    if cfg.http.enabled:
        from proxydhcp.web.server import HTTPService
        HTTPService(live, bus).setServiceParent(top)
    return top


# --- the files the daemon serves ---------------------------------------------------------------
def check_files(cfg, user: str | None = None) -> None:
    """StartupError (one line naming the fix) when this process cannot read the TFTP root,
    a configured boot file (when the bundled TFTP server serves them) or http.root.
    Run before anything binds, again after the privilege drop (user: who we now are), and
    on each reload (through reload_check)."""
    from proxydhcp.config import boot_file
    by = f" by user {user}" if user else ""
    fix_user = f", make it readable by {user} or set run.user" if user else ""
    t = cfg.tftp
    if t.enabled:
        if not os.path.isdir(t.root):
            raise StartupError(f"tftp.root {t.root} does not exist or is not a directory: create it, "
                               f"set tftp.root, or set tftp.enabled: false")
        if not os.access(t.root, os.R_OK | os.X_OK):
            raise StartupError(f"tftp.root {t.root} is not readable{by}: fix its permissions{fix_user}")
        wanted = [(f"boot.firmware.{k}", v) for k, v in cfg.boot.firmware.items()]
        wanted += [(f"dhcp.quirks[{i}].set.firmware", q.set["firmware"]) for i, q in enumerate(cfg.dhcp.quirks)
                   if isinstance(q.set, dict) and q.set.get("firmware")]
        for key, value in wanted:
            _name, path = boot_file(value, t.root)
            if not os.path.isfile(path):
                raise StartupError(f"boot file {path} ({key}) is missing: put it there (Debian: apt install "
                                   f"ipxe), or fix {key} or tftp.root")
            if not os.access(path, os.R_OK):
                raise StartupError(f"boot file {path} ({key}) is not readable{by}: fix its permissions{fix_user}")
    h = cfg.http
    if h.enabled and h.port == 0:
        raise StartupError("http.port 0 would pick another free port at each start, but the ProxyDHCP hands "
                           "iPXE URLs with the port in them: set http.port (default 8080)")
    if h.enabled and h.root and not (os.path.isdir(h.root) and os.access(h.root, os.R_OK | os.X_OK)):
        raise StartupError(f"http.root {h.root} is not a readable directory{by}: fix the path or its "
                           f"permissions{fix_user}")


_RESTART_ONLY = (("dhcp", "proxy_port"), ("tftp", "port"), ("tftp", "enabled"), ("http", "port"),
                 ("http", "enabled"), ("state", "dir"), ("events", "enabled"), ("run", "user"),
                 ("run", "drop_privileges"))


def reload_check(running_config):
    """A LiveConfig observer: veto (ConfigError) a reloaded config whose files cannot be
    served, or that changes a setting only a restart applies (ports, state.dir, run.*)."""
    from proxydhcp.config import ConfigError

    def check(new) -> None:
        old = running_config()
        for section, key in _RESTART_ONLY:
            a, b = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
            if a != b:
                raise ConfigError(f"{section}.{key} changed ({a!r} -> {b!r}): restart proxydhcp to apply it")
        try:
            check_files(new, _whoami() if os.geteuid() != 0 else None)
        except StartupError as exc:
            raise ConfigError(str(exc)) from None
    return check


def _whoami() -> str:
    import pwd
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# --- least privilege ---------------------------------------------------------------------------
def drop_privileges(top: MultiService, cfg, user_name: str | None, enabled: bool) -> str:
    """After every socket is bound: as root, become the unprivileged user keeping only
    CAP_NET_RAW and CAP_NET_BIND_SERVICE (proxydhcp.privileges), after giving it the state
    files. Returns a line for the log. StartupError when the files it must serve are not
    readable by that user."""
    from proxydhcp import privileges
    plan = privileges.decide(os.geteuid(), enabled)
    if not plan.drop:
        return f"{plan.reason}: {privileges.describe_self()}"
    try:
        user = privileges.choose_user(user_name)
    except privileges.PrivilegeError as exc:
        raise StartupError(str(exc)) from None
    state = [cfg.state.dir]
    if cfg.events.enabled:
        from proxydhcp.events.service import paths
        _db, sock, spool = paths(cfg)
        state += [sock, spool]
    try:
        privileges.own_state(state, user.pw_uid, user.pw_gid)
        events = _named(top, "events")
        if events is not None and events.store is not None:
            events.store.drop_to(user.pw_uid, user.pw_gid)   # its writer process drops too
        privileges.drop_to(user)
    except OSError as exc:
        raise StartupError(f"cannot switch to user {user.pw_name}: {exc.strerror or exc}; "
                           f"set run.user, or run.drop_privileges: false / --no-drop") from None
    check_files(cfg, user.pw_name)
    if cfg.events.enabled and not os.access(cfg.state.dir, os.W_OK | os.X_OK):
        log.warning("state.dir %s is not reachable by user %s (a parent directory?): events still go to "
                    "the open store, but /api/sessions, the hook spool and restarts need it; fix the "
                    "permissions of its parents", cfg.state.dir, user.pw_name)
    if top.live.path and not os.access(top.live.path, os.R_OK):
        log.warning("config %s is not readable by user %s: a reload (SIGHUP) will fail; make it readable",
                    top.live.path, user.pw_name)
    return f"dropped privileges: {privileges.describe_self()}"


# --- the garbage collector ----------------------------------------------------------------------
GC_FULL_EVERY = 300.0   # seconds between full collections of the cyclic garbage collector
GC_MIDDLE = 10          # young collections per middle one (as CPython)


def tune_gc(reactor, every: float = GC_FULL_EVERY):
    """Keep the cyclic GC's full collections off the packet path. What start-up built (modules,
    config, policy, metrics) lives as long as the daemon, so it is frozen out of the collector's
    way; a boot storm keeps ~20,000 sessions, and a full collection over them holds the reactor
    for 10-50 ms, which allocation counts would start about once a second under load. So full
    collections run on a timer instead (every `every` seconds); the young generations are still
    collected (the middle one after GC_MIDDLE young ones, so that each pause stays well under a
    millisecond), and no memory is lost: cyclic garbage waits at most `every` seconds.
    Returns the LoopingCall."""
    import gc
    from twisted.internet.task import LoopingCall
    gc.collect()
    gc.freeze()
    young, _middle, _old = gc.get_threshold()
    gc.set_threshold(young, GC_MIDDLE, 1_000_000)
    loop = LoopingCall(gc.collect)
    loop.clock = reactor
    loop.start(every, now=False)
    return loop


# --- graceful stop -----------------------------------------------------------------------------
def busy(top: MultiService) -> tuple[int, int]:
    """(TFTP transfers running, HTTP responses under way)."""
    tftp = _named(top, "tftp")
    http = _named(top, "http")
    return (len(tftp.sessions) if tftp else 0, http.in_flight if http else 0)


def _named(top: MultiService, name: str):
    try:
        return top.getServiceNamed(name)
    except KeyError:
        return None


def graceful_stop(top: MultiService, grace: float, reactor, poll: float = 0.05):
    """SIGTERM: take no new DHCP, TFTP or HTTP work; let running TFTP transfers and HTTP
    responses finish for up to `grace` seconds; then stop every service (what is still
    running is aborted, and the event store writes everything queued). Fires when done."""
    from twisted.internet import defer
    dhcp, tftp, http = _named(top, "dhcp"), _named(top, "tftp"), _named(top, "http")
    if dhcp is not None and dhcp.running:
        dhcp.stopService()
    if tftp is not None:
        tftp.stop_accepting()
    if http is not None:
        http.stop_accepting()
    transfers, responses = busy(top)
    log.info("stopping: no new requests; waiting up to %.1f s for %d TFTP transfer(s) and %d HTTP "
             "response(s)", grace, transfers, responses)
    done = defer.Deferred()
    deadline = reactor.seconds() + grace

    def check() -> None:
        transfers, responses = busy(top)
        if transfers or responses:
            if reactor.seconds() < deadline:
                reactor.callLater(poll, check)
                return
            log.warning("stop grace (run.stop_grace=%.1f s) over: aborting %d TFTP transfer(s) and %d "
                        "HTTP response(s)", grace, transfers, responses)
        d = defer.maybeDeferred(top.stopService) if top.running else defer.succeed(None)
        d.addBoth(lambda _: done.callback(None))

    check()
    return done
