"""The primary's end of a drain, with a fake transport (no network).

When a stopping primary has handed a secondary everything committed, it
half-closes the link.  The transport may have paused the streamer
(back-pressure) just before: the half-close must still happen, rather than
the transport resuming a streamer that has ended and waiting for it.
"""
from twisted.internet.testing import StringTransport

from zrsd.primary.server import Phase, PrimaryProtocol


class Transport(StringTransport):
    """Records the half-close, and whether a producer was still
    registered when it was asked for."""

    write_closed = False
    producer_at_close = 'unset'

    def loseWriteConnection(self):
        self.producer_at_close = self.producer
        self.write_closed = True


class Streamer:
    def __init__(self):
        self.finishing = False

    def finish(self):
        self.finishing = True

    def pause(self):
        pass

    def resume(self):
        pass

    def stop(self):
        pass


def draining_connection():
    connection = PrimaryProtocol(server=None)
    connection.transport = Transport()
    connection.streamer = Streamer()
    connection.phase = Phase.STREAMING
    connection.peer = 'test -> 127.0.0.1:1'
    connection.transport.registerProducer(object(), True)
    connection.transport.producerState = 'paused'   # back-pressure
    return connection


def test_end_of_drain_half_closes_with_the_streamer_unregistered():
    connection = draining_connection()
    drained = connection.drain()
    assert connection.phase is Phase.DRAINING
    assert connection.streamer.finishing
    connection._streamer_done(None)     # the streamer sent everything
    transport = connection.transport
    assert transport.write_closed
    assert transport.producer_at_close is None
    assert not drained.called           # until the secondary closes
