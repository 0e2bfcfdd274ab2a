"""A connection's `Outbox` sends from any thread straight to the socket
while the transport is empty, through the reactor thread otherwise, and
the peer reads every byte in the order sent (`zrsd.network.outbox`).

A real reactor (its own instance, in its own thread), a real TCP
connection on 127.0.0.1 and a plain blocking socket reading at the other
end.
"""
import itertools
import queue
import socket
import threading

import pytest
from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor

from harness.process import wait_until
from zrsd.daemon.reactor import ReactorThread
from zrsd.network import outbox as outbox_module
from zrsd.network.outbox import Outbox


class Sending(protocol.Protocol):
    """The server side: its outbox, and what went through the reactor."""

    def connectionMade(self):
        # Small buffers: a megabyte is more than the socket takes at once.
        self.transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.through_reactor = []
        self.outbox = Outbox(self.factory.reactor, self.transport,
                             self._write)
        self.factory.made.put(self)

    def _write(self, chunks):
        self.through_reactor.append(sum(len(chunk) for chunk in chunks))
        self.transport.writeSequence(chunks)

    def connectionLost(self, reason):
        self.outbox.close()


@pytest.fixture
def link():
    """(server side, reading socket, reactor thread)."""
    thread = ReactorThread(EPollReactor())
    thread.start()
    factory = protocol.Factory.forProtocol(Sending)
    factory.reactor, factory.made = thread.reactor, queue.Queue()
    port = thread.call(thread.reactor.listenTCP, 0, factory,
                       interface='127.0.0.1')
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(('127.0.0.1', port.getHost().port))
    sending = factory.made.get(timeout=30)
    yield sending, reader, thread
    reader.close()
    thread.call(port.stopListening)
    thread.stop()


def frames(sizes):
    """Chunks whose bytes say where they are in the stream."""
    counter = itertools.count()
    return [bytes([next(counter) % 251 for _ in range(size)])
            for size in sizes]


def wait_clear(sending):
    wait_until(lambda: sending.outbox._clear, 30,
               message='the transport is empty again')


def test_small_frames_go_straight_to_the_socket(link):
    sending, reader, thread = link
    sending.outbox.send([b'first'])        # nothing sent yet: the reactor
    assert reader.recv(5, socket.MSG_WAITALL) == b'first'
    wait_clear(sending)
    for chunks in [[b'a', b'bc'], [b'def']] * 10:
        sending.outbox.send(chunks)
    assert reader.recv(60, socket.MSG_WAITALL) == b'abcdef' * 10
    assert sending.through_reactor == [5]


def test_a_full_socket_sends_the_rest_through_the_reactor_in_order(link):
    sending, reader, thread = link
    sending.outbox.send([b''])
    wait_clear(sending)
    # Far more than the socket buffers hold while nobody reads: the
    # rest waits in the transport, and what follows must queue behind it.
    chunks = frames([1 << 20] + [10] * 50)
    sent = threading.Thread(target=lambda: [
        sending.outbox.send([chunk]) for chunk in chunks])
    sent.start()
    sent.join(30)
    expected = b''.join(chunks)
    assert reader.recv(len(expected), socket.MSG_WAITALL) == expected
    assert 0 < sum(sending.through_reactor) < len(expected)
    assert len(sending.through_reactor) >= 50  # the small ones queued too
    wait_clear(sending)
    before = list(sending.through_reactor)
    sending.outbox.send([b'straight again'])
    assert reader.recv(14, socket.MSG_WAITALL) == b'straight again'
    assert sending.through_reactor == before


def test_bulk_frames_go_through_the_reactor_and_report_written(link):
    sending, reader, thread = link
    sending.outbox.send([b''])
    wait_clear(sending)
    written = threading.Event()
    sending.outbox.send([b'bulk'], direct=False, written=written.set)
    assert written.wait(30)
    assert sending.through_reactor[-1] == 4
    sending.outbox.send([b'then'])        # waits for the drain check
    assert reader.recv(8, socket.MSG_WAITALL) == b'bulkthen'


def test_a_closed_outbox_sends_nothing_straight(link, monkeypatch):
    sending, reader, thread = link
    monkeypatch.setattr(outbox_module, 'DRAIN_CHECK', 0.001)
    sending.outbox.send([b''])
    wait_clear(sending)
    thread.call(sending.outbox.close)
    assert sending.outbox._socket is None
    sending.outbox.send([b'late'])         # the reactor path, not a crash
    assert reader.recv(4, socket.MSG_WAITALL) == b'late'
    assert sending.through_reactor[-1] == 4


def test_a_secondary_that_stops_reading_is_looked_at_less_and_less(
        link, monkeypatch):
    sending, reader, thread = link
    monkeypatch.setattr(outbox_module, 'DRAIN_CHECK_MAX', 0.05)
    sending.outbox.send([b''])
    wait_clear(sending)
    chunks = frames([1 << 20])
    sending.outbox.send(chunks)            # the rest waits in the transport
    wait_until(lambda: sending.outbox._wait == 0.05, 30,
               message='the drain checks back off')
    assert not sending.outbox._clear
    assert reader.recv(1 << 20, socket.MSG_WAITALL) == chunks[0]
    wait_clear(sending)
    assert sending.outbox._wait == outbox_module.DRAIN_CHECK
