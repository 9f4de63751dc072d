"""Command line: `proxydhcp serve | check-config | arches | explain | sessions | events`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from proxydhcp import __version__, arch, config

log = logging.getLogger("proxydhcp")


def _cmd_serve(args) -> int:
    from proxydhcp import logs, service
    cfg = config.load(args.config)
    logs.setup(cfg.log.level, cfg.log.format)
    from twisted.internet import reactor

    try:
        live = config.LiveConfig(cfg, args.config)
        top = service.build(live)
        top.startService()
    except service.StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    log.info("proxydhcp %s running (config: %s)", __version__, cfg.source)

    def stop(*_):
        reactor.callFromThread(reactor.stop)

    from proxydhcp.policy.reload import Reloader
    reloader = Reloader(live, reactor)  # SIGHUP, and the config file changing
    reloader.install_sighup()
    reloader.watch()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.run(installSignalHandlers=False)
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
    s.set_defaults(func=_cmd_serve)
    s = sub.add_parser("check-config", help="validate a config file and exit")
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
        print(f"proxydhcp: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
