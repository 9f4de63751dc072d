"""Runs only proxydhcp's HTTP service (no DHCP, no TFTP) on 127.0.0.1 with a config file,
prints its port, reloads on SIGHUP: for HTTP integration tests without root.

usage: python -m tests.http_harness CONFIG
"""

import signal
import sys

from twisted.internet import reactor

from proxydhcp import config, logs
from proxydhcp.events import EventBus
from proxydhcp.web.server import HTTPService


def main() -> None:
    path = sys.argv[1]
    live = config.LiveConfig(config.load(path), path)
    logs.setup("info")
    svc = HTTPService(live, EventBus())
    svc.startService()
    print(svc.bound_port, flush=True)

    def hup(*_):
        def do():
            ok, msg = live.reload()
            print(("RELOAD-OK " if ok else "RELOAD-FAILED ") + msg, flush=True)
        reactor.callFromThread(do)

    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
