"""The primary's end of a drain, with a fake transport (no network).

When a stopping primary has handed a secondary everything committed, it
half-closes the link, even if the transport had paused the streamer
(back-pressure) just before: a transport resuming a streamer that has
ended would wait for it instead.
"""
from unittest import mock

from twisted.internet.testing import StringTransport

from zrsd.primary.connection import Phase, PrimaryProtocol


class Transport(StringTransport):
    """Records the half-close and the producer registered at that time."""

    write_closed = False
    producer_at_close = 'unset'

    def loseWriteConnection(self):
        self.producer_at_close = self.producer
        self.write_closed = True


def test_end_of_drain_half_closes_with_the_streamer_unregistered():
    connection = PrimaryProtocol(server=None)
    connection.transport = transport = Transport()
    connection.streamer = mock.Mock(spec=['finish', 'pause', 'resume',
                                          'stop'])
    connection.phase = Phase.STREAMING
    connection.peer = 'test -> 127.0.0.1:1'
    transport.registerProducer(object(), True)
    transport.producerState = 'paused'   # back-pressure
    drained = connection.drain()
    assert connection.phase is Phase.DRAINING
    connection.streamer.finish.assert_called_once_with()
    connection._streamer_done(None)     # the streamer sent everything
    assert transport.write_closed
    assert transport.producer_at_close is None
    assert not drained.called           # until the secondary closes
