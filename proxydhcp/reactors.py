"""The one rule for which Twisted reactor a service uses: the one it was given (tests pass
a Clock or a fake), else the global reactor, imported when first needed so that importing a
service never installs one."""

from __future__ import annotations


class UsesReactor:
    """Mixin: set `self._reactor` (None for the default) in __init__; use `self.reactor`."""

    _reactor = None

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor
