"""Command line: `proxydhcp serve | check (check-config) | arches | explain | sessions | events`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from proxydhcp import __version__, arch, config

log = logging.getLogger("proxydhcp")


def _cmd_serve(args) -> int:
    """Start-up: config, files, every socket bound, then the privilege drop. Any problem
    ends it with one line naming the fix (exit 1; a bad config: exit 2), no traceback."""
    import os

    from proxydhcp import logs, service
    cfg = config.load(args.config)
    fmt = args.log_format or cfg.log.format
    logs.setup(cfg.log.level, fmt, hold=True)
    from twisted.internet import reactor

    live = config.LiveConfig(cfg, args.config)
    top = None
    try:
        service.check_files(cfg)
        top = service.build(live)
        top.startService()
        dropped = service.drop_privileges(top, cfg, args.user or cfg.run.user,
                                          cfg.run.drop_privileges and not args.no_drop)
    except (service.StartupError, OSError) as exc:
        message = str(exc)
        logs.release(emit=cfg.log.level.lower() == "debug")
        if top is not None and top.running:
            try:
                top.stopService()
            except Exception:   # a half-started service: its own error is not the one to show
                pass
        if fmt == "json":
            log.error("cannot start: %s", message)
        else:
            print(f"proxydhcp: cannot start: {message}", file=sys.stderr, flush=True)
        return 1
    except BaseException:
        logs.release()      # an unexpected failure: show what led to it, then the traceback
        raise
    logs.release()
    top.bus.subscribe(logs.event_logger(lambda: live.current.log.events))
    live.subscribe(service.reload_check(lambda: live.current))

    stopping = []

    def graceful() -> None:
        if stopping:                       # a second SIGTERM/SIGINT: stop now
            log.warning("second stop signal: stopping at once")
            if reactor.running:
                reactor.stop()
            return
        stopping.append(True)
        d = service.graceful_stop(top, live.current.run.stop_grace, reactor)
        d.addBoth(lambda _: reactor.stop() if reactor.running else None)

    from proxydhcp.policy.reload import Reloader
    reloader = Reloader(live, reactor)  # SIGHUP, and the config file changing
    reloader.install_sighup()
    reloader.watch()
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(graceful))
    signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(graceful))
    reactor.addSystemEventTrigger("before", "shutdown", lambda: top.stopService() if top.running else None)
    service.tune_gc(reactor)
    # "running" only once SIGTERM/SIGHUP are ours: a supervisor (or a test) that reads it may stop us
    log.info("%s", dropped)
    log.info("proxydhcp %s running (config: %s, pid %d)", __version__, cfg.source, os.getpid())
    reactor.run(installSignalHandlers=False)
    log.info("stopped")
    return 0


def _cmd_check_config(args) -> int:
    cfg = config.load(args.config)
    print(f"{cfg.source}: OK")
    return 0


def _cmd_arches(args) -> int:
    print(f"{'code':>4}  {'name':<22} {'firmware key':<18} description")
    for code in sorted(arch.BY_CODE):
        a = arch.BY_CODE[code]
        print(f"{a.code:>4}  {a.name:<22} {a.firmware:<18} {a.description}")
    return 0


def _cmd_explain(args) -> int:
    from proxydhcp.policy import explain
    cfg = config.load(args.config)
    m = explain.machine(args.mac, arch=args.arch, uuid=args.uuid, ip=args.ip, firmware=args.firmware,
                        interface=args.interface, vendor_class=args.vendor_class,
                        user_classes=args.user_class, hostname=args.hostname)
    lines, script = explain.explain(cfg, m, args.server or cfg.dhcp.server_address or "SERVER",
                                    ask_api=not args.no_api)
    from proxydhcp import responder
    lines += responder.explain(cfg, m.mac, args.arch, args.vendor_class, args.user_class or (), args.firmware,
                               args.server or cfg.dhcp.server_address or "SERVER")
    print("\n".join(lines))
    print("script:")
    print(script, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proxydhcp",
        description="ProxyDHCP + TFTP + HTTP network boot beside an untouched DHCP server.")
    p.add_argument("--version", action="version", version=f"proxydhcp {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon (ProxyDHCP on 67/4011, TFTP, HTTP)")
    s.add_argument("-c", "--config", help="YAML config file (default: the built-in default)")
    s.add_argument("--user", help="started as root: the user to switch to once every port is bound "
                                  "(run.user; default: proxydhcp if it exists, else nobody)")
    s.add_argument("--no-drop", action="store_true",
                   help="started as root: stay root (run.drop_privileges: false); not advised")
    s.add_argument("--log-format", choices=["text", "json"],
                   help="log lines as text (journald-friendly) or JSON objects (log.format)")
    s.epilog = ("signals: SIGHUP reloads the config (a bad one is refused, the running one kept); "
                "SIGTERM stops taking requests, lets running transfers finish within run.stop_grace "
                "seconds, writes the event store and exits 0. Exit 1: cannot start (one line says "
                "why); exit 2: bad config.")
    s.set_defaults(func=_cmd_serve)
    s = sub.add_parser("check", aliases=["check-config"], help="validate a config file and exit")
    s.add_argument("-c", "--config", help="YAML config file (default: the built-in default)")
    s.set_defaults(func=_cmd_check_config)
    s = sub.add_parser("explain", help="which group and profile a machine gets, why, and its script")
    s.add_argument("-c", "--config", help="YAML config file (default: the built-in default)")
    s.add_argument("--mac", required=True)
    s.add_argument("--arch", type=int, help="option-93 code (see `proxydhcp arches`)")
    s.add_argument("--uuid")
    s.add_argument("--ip")
    s.add_argument("--firmware", choices=["legacy-pxe", "ipxe", "uefi-http"])
    s.add_argument("--interface")
    s.add_argument("--vendor-class")
    s.add_argument("--user-class", action="append")
    s.add_argument("--hostname")
    s.add_argument("--server", help="our address as the script should show it")
    s.add_argument("--no-api", action="store_true", help="do not ask an api profile's URL; show the fallback")
    s.set_defaults(func=_cmd_explain)
    s = sub.add_parser("arches", help="print the client architecture table (option 93)")
    s.set_defaults(func=_cmd_arches)
    from proxydhcp.events import report
    report.add_parsers(sub)   # sessions, events
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except config.ConfigError as exc:
        print(f"proxydhcp: config error: {' '.join(exc.located().split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
