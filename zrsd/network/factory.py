"""A quiet Twisted protocol factory, for the client's and the server's
connections."""
from twisted.internet import protocol


class ProtocolFactory(protocol.Factory):
    """Builds each connection's protocol with `make()`; logs nothing of
    its own (the protocols log their connections)."""

    noisy = False

    def __init__(self, make):
        self.make = make

    def buildProtocol(self, addr):
        return self.make()
