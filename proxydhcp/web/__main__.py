"""Run only the HTTP service (no DHCP, no TFTP): `python -m proxydhcp.web CONFIG [--host ADDR]`.

For serving scripts and files from a host that is not the ProxyDHCP, and for tests. Prints
the bound port on its first line (http.port 0 picks a free one), then with --events one JSON
line per HTTP_FETCH event; reloads on SIGHUP and when the file changes; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor

    from proxydhcp import config, logs
    from proxydhcp.events import EventBus
    from proxydhcp.policy.reload import Reloader
    from proxydhcp.service import StartupError
    from proxydhcp.web.server import HTTPService

    p = argparse.ArgumentParser(prog="python -m proxydhcp.web", description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--watch-interval", type=float, default=2.0, help="seconds between config file checks")
    p.add_argument("--events", action="store_true", help="print each HTTP fetch event as a JSON line")
    args = p.parse_args(argv)
    try:
        live = config.LiveConfig(config.load(args.config), args.config)
    except config.ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    logs.setup(live.current.log.level, live.current.log.format)
    bus = EventBus()
    if args.events:
        bus.subscribe(lambda e: print(json.dumps(e, default=str), flush=True))
    svc = HTTPService(live, bus)
    try:
        svc.startService()
    except StartupError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1
    print(svc.bound_port, flush=True)
    reloader = Reloader(live, reactor, args.watch_interval)
    reloader.install_sighup()
    reloader.watch()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
