"""A stand-in for the reactor calls the TFTP service makes, without running a reactor: tests
call the service's handlers themselves, and timers never fire."""


class Call:
    def active(self):
        return False

    def cancel(self):
        pass


class FakeReactor:
    def addReader(self, r):
        pass

    def removeReader(self, r):
        pass

    def callLater(self, *a, **kw):
        return Call()
