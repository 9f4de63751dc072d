"""`python -m proxydhcp.tftp`: the TFTP service alone (benchmarks, tests, debugging).

Uses the same config as `proxydhcp serve` (tftp and boot sections); --root, --port and
--address override it. Prints one line "TFTP listening on ADDRESS:PORT" once bound.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from proxydhcp import config, logs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m proxydhcp.tftp", description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", help="proxydhcp YAML config (default: the built-in one)")
    p.add_argument("--root", help="override tftp.root")
    p.add_argument("--port", type=int, help="override tftp.port (0: any free port)")
    p.add_argument("--address", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--log-level", default=None)
    p.add_argument("--events", metavar="FILE", help="append each transfer event to FILE as a JSON line")
    args = p.parse_args(argv)
    cfg = config.load(args.config)
    if args.root is not None:
        cfg.tftp.root = args.root
    if args.port is not None:
        cfg.tftp.port = args.port
    logs.setup(args.log_level or cfg.log.level, cfg.log.format)
    from twisted.internet import reactor

    from proxydhcp.events import EventBus
    from proxydhcp.service import StartupError
    from proxydhcp.tftp.server import TFTPService

    bus = EventBus()
    if args.events:
        out = open(args.events, "a", buffering=1)
        bus.subscribe(lambda event: out.write(json.dumps(event) + "\n"))
    svc = TFTPService(config.LiveConfig(cfg, args.config), bus, address=args.address)
    try:
        svc.startService()
    except StartupError as exc:
        logging.getLogger("proxydhcp").error("cannot start: %s", exc)
        return 1
    print(f"TFTP listening on {args.address}:{svc.port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    reactor.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
