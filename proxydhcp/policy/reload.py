"""Reloading the running configuration: on SIGHUP and when the config file changes.

`LiveConfig.reload()` validates the new file first (profiles and groups included) and keeps
the old config when it is bad, counting proxydhcp_config_reloads_total{result} and setting
proxydhcp_config_last_reload_successful. This module only decides *when* to reload and logs
the outcome. The file is polled (stat, then a content hash): no inotify dependency, and an
editor's save-by-rename is seen like any other write. A bad file is tried once per change,
not on every poll.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal

log = logging.getLogger("proxydhcp.config")


class Reloader:
    def __init__(self, live, reactor, interval: float = 2.0) -> None:
        self.live, self.reactor, self.interval = live, reactor, interval
        self._loop = None
        self._stat = self._digest = None
        if live.path:
            self._stat, self._digest = self._look()

    def reload(self, why: str) -> bool:
        ok, message = self.live.reload()
        (log.info if ok else log.error)("%s: %s", why, message)
        if self.live.path:
            self._stat, self._digest = self._look()
        return ok

    def install_sighup(self) -> None:
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload, "SIGHUP"))

    def watch(self) -> None:
        """Poll the config file every `interval` seconds (no-op without a file)."""
        if not self.live.path or self._loop is not None:
            return
        from twisted.internet.task import LoopingCall
        self._loop = LoopingCall(self.check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> None:
        stat, digest = self._look(content=False)
        if stat == self._stat:
            return
        stat, digest = self._look()
        if digest == self._digest:  # touched, or rewritten with the same text
            self._stat = stat
            return
        if digest is None:  # vanished mid-rename: look again next time
            return
        self.reload(f"{self.live.path} changed")

    def _look(self, content: bool = True):
        try:
            st = os.stat(self.live.path)
        except OSError:
            return None, None
        stat = (st.st_ino, st.st_size, st.st_mtime_ns)
        if not content:
            return stat, None
        try:
            with open(self.live.path, "rb") as fh:
                return stat, hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            return stat, None
