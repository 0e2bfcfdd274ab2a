"""zrsd.replica.client on a fake network, like zc.zrs's ``secondary.test``:
a `Clock` is the reactor, the test completes or refuses connection attempts
and plays the primary; a `StringTransport` records what the client writes."""
import decimal
import logging
import socket
import struct
import time

import pytest
from twisted.internet import defer, error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from ZODB.utils import p64, z64

from zrsd import protocol as zrs
from zrsd.network.sockets import pending_bytes
from zrsd.replica import client

from harness.process import wait_until
from harness.stream import RecordingSink, Stream, bytewise

LOGGER = 'zrsd.replica.client'
TID1, TID2, TID3, TID4, TID5 = [
    p64(0x03E5000000000000 + n) for n in (0x10, 0x20, 0x30, 0x31, 0x32)]
OID0, OID1 = p64(0), p64(1)
BAD_DIGEST = b'\2' * 16


class FakeStorage(RecordingSink):
    """The replica storage: a resume tid, and itself as the writer, with
    the writer's group commit (deferred fsyncs, `sync()`)."""

    defer_sync, unsynced, unsynced_since, syncs = False, 0, None, 0
    failure = None      # a disk failure: never sync again

    def __init__(self, last=z64, fail_on=None):
        super().__init__(fail_on=fail_on)
        self.last, self.writer = last, self

    def lastTransaction(self):
        return self.last

    last_applied = lastTransaction

    def sync(self):
        if self.unsynced:
            self.syncs, self.unsynced = self.syncs + 1, 0

    def commit(self):
        self.last = super().commit()
        if self.defer_sync:
            if not self.unsynced:
                self.unsynced_since = time.monotonic()
            self.unsynced += 1
        return self.last

    def brief(self):
        """The calls, each as its name and first argument."""
        return [call[:2] for call in self.calls]


def handshake(start_tid):
    return zrs.encode_frame(b'zrs2.0') + zrs.encode_frame(start_tid)


class Setup:
    """A client on a `FakeStorage` and a clock; also its endpoint, whose
    `connect()` returns a Deferred the test fires (or fails) itself."""

    def __init__(self, last=z64, fail_on=None, **kw):
        self.clock = task.Clock()
        self.attempts = []  # [(factory, deferred)]
        self.storage = FakeStorage(last, fail_on)
        self.commits = []
        self.client = client.ReplicationClient(
            '1', self.storage, ('primary.example.com', 5000), self, self.clock,
            client.LinkSettings(**kw),
            on_commit=lambda tid, n: self.commits.append(tid))

    def connect(self, factory):
        self.attempts.append((factory, defer.Deferred()))
        return self.attempts[-1][1]

    def accept(self, handle=None):
        """Complete the last attempt: (protocol, transport), the transport
        `disconnected` once aborted, with `handle` as its socket."""
        factory, d = self.attempts[-1]
        transport = StringTransport()
        transport.getHandle = lambda: handle
        proto = factory.buildProtocol(None)
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def refuse(self):
        self.attempts[-1][1].errback(
            Failure(error.ConnectionRefusedError('Connection refused')))

    def start(self, handle=None):
        """Start the client and accept its attempt: (protocol, transport)."""
        self.client.start()
        return self.accept(handle)

    def reconnect_delay(self):
        """The delay of the one pending reconnect attempt."""
        delays = [call.getTime() - self.clock.seconds()
                  for call in self.clock.getDelayedCalls()]
        assert len(delays) == 1, delays
        return delays[0]

    def wait_for_attempt(self):
        """Advance the clock to the next connection attempt."""
        attempts = len(self.attempts)
        self.clock.advance(self.reconnect_delay())
        assert len(self.attempts) == attempts + 1


def lost(proto, exc=None):
    proto.connectionLost(Failure(exc or error.ConnectionLost('gone')))


def errors(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR]


@pytest.fixture
def tcp():
    """A connected pair of TCP sockets: (sender, receiver)."""
    with socket.create_server(('127.0.0.1', 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver = listener.accept()[0]
    with sender, receiver:
        yield sender, receiver


# -- connecting and the handshake ------------------------------------------

@pytest.mark.parametrize('last, kw, name', [
    (TID1, {}, b'zrs2.0'),
    (z64, {'protocol_name': zrs.PROTOCOL_2_1}, b'zrs2.1'),
], ids=['on-connection', 'from-scratch-and-with-blobs'])
def test_handshake(last, kw, name):
    s = Setup(last, **kw)
    assert s.attempts == []
    s.client.start()
    assert len(s.attempts) == 1 and not s.client.connected
    proto, transport = s.accept()
    assert isinstance(proto, client.SecondaryProtocol)
    # The protocol name, then the last tid; nothing else, no reply wanted.
    assert transport.value() == b'\0\0\0\x06' + name + b'\0\0\0\x08' + last
    assert s.client.connected and s.client.connection is proto


def test_socket_is_tuned_for_tcp(tcp):
    sock = Setup().start(tcp[1])[1].getHandle()
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_keep_alives_every_delay():
    s = Setup(keep_alive_delay=60)
    proto, transport = s.start()
    transport.clear()
    for step, sent in [(59, 0), (1, 1), (60, 2), (60, 3), (60, 4)]:
        if sent == 4:   # receiving data does not disturb them
            proto.dataReceived(Stream(z64).one(TID1).wire())
        s.clock.advance(step)
        assert transport.value() == b'\0\0\0\0' * sent


@pytest.mark.parametrize('keep_alive_delay, disconnect, scheduled', [
    (60, True, 1),      # only the reconnect, no keep-alive loop
    (0, False, 0),      # disabled
], ids=['stop-with-the-connection', 'disabled'])
def test_no_keep_alives(keep_alive_delay, disconnect, scheduled):
    s = Setup(keep_alive_delay=keep_alive_delay)
    proto, transport = s.start()
    transport.clear()
    if disconnect:
        lost(proto)
    assert len(s.clock.getDelayedCalls()) == scheduled
    s.clock.advance(3600)
    assert transport.value() == b''


# -- replicating -----------------------------------------------------------

def test_transaction_is_committed():
    s = Setup(TID1)
    proto, transport = s.start()
    primary = Stream(TID1)  # the checksum is seeded with our start tid
    proto.dataReceived(primary.one(TID2, data=b'two').take())
    assert s.storage.calls == [('begin', TID2, ' ', b'', b'', {}),
                               ('store', OID0, TID2, b'two', None),
                               ('commit', TID2)]
    assert s.commits == [TID2]
    for byte in bytewise(primary.one(TID3).take()):
        proto.dataReceived(byte)
    assert s.storage.committed == s.commits == [TID2, TID3]
    assert not transport.disconnected


def test_bad_checksum(caplog):
    s = Setup()
    proto, transport = s.start()
    primary = Stream(z64)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        proto.dataReceived(primary.one(TID1).take())
        proto.dataReceived(primary.one(TID2, digest=b'\1' * 16).take())
    [line] = errors(caplog)
    assert 'checksum mismatch' in line and TID2.hex() in line
    assert 'primary.example.com:5000' in line
    assert s.storage.calls[-1] == ('abort', TID2)
    assert s.storage.committed == [TID1]
    assert transport.disconnected and s.client.stream_failures == 1
    # Whatever else arrives before the connection is gone is ignored.
    proto.dataReceived(Stream(TID1).one(TID3).wire())
    assert s.storage.committed == [TID1]
    # The connection goes; the client reconnects, from the last good tid.
    lost(proto)
    assert s.storage.names().count('abort') == 1 and not s.client.connected
    s.wait_for_attempt()
    proto, transport = s.accept()
    assert transport.value() == handshake(TID1)
    proto.dataReceived(Stream(TID1).one(TID2).wire())
    assert s.storage.committed == [TID1, TID2]


@pytest.mark.parametrize('setup, data, texts, brief, traceback', [
    (Setup, zrs.encode_frame(b'\xff garbage'), ['undecodable'], [], False),
    (lambda: Setup(max_frame=1000),
     Stream(z64).begin(TID1).wire() + struct.pack('>I', 1001), ['too large'],
     [('begin', TID1), ('abort', TID1)], False),
    (lambda: Setup(fail_on='store'),
     Stream(z64).one(TID1).wire(), ['disk full', TID1.hex()],
     [('begin', TID1), ('store', OID0), ('abort', TID1)], True),
], ids=['garbage-frame', 'frame-too-large', 'sink-failure'])
def test_bad_input_is_logged_and_drops_the_connection(
        caplog, setup, data, texts, brief, traceback):
    """One ERROR (a traceback if unexpected); the transaction aborts now."""
    s = setup()
    proto, transport = s.start()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        proto.dataReceived(data)
    assert transport.disconnected
    [record] = caplog.records
    assert record.levelname == 'ERROR'
    assert [t for t in texts if t in record.getMessage()] == texts
    assert (record.exc_info is not None) == traceback
    assert s.storage.brief() == brief
    lost(proto)
    assert s.storage.brief() == brief


def test_connection_lost_mid_transaction_aborts_and_reconnects(caplog):
    s = Setup()
    proto, transport = s.start()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        proto.dataReceived(
            Stream(z64).begin(TID1).store(OID0, TID1, b'half').take())
        lost(proto, error.ConnectionDone('closed by peer'))
    assert s.storage.calls[-1] == ('abort', TID1)
    assert s.storage.committed == [] and 'disconnected' in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    s.wait_for_attempt()
    proto, transport = s.accept()
    assert transport.value() == handshake(z64)


def test_client_options_reach_the_receiver(caplog):
    def run(**kw):
        s = Setup(**kw)
        proto, transport = s.start()
        proto.dataReceived(Stream(z64).begin(
            TID1, extension={'amount': decimal.Decimal('1.5')})
            .commit(b'\3' * 16).take())
        return s, transport

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        s, transport = run()
    assert 'refused global decimal.Decimal' in caplog.text
    assert transport.disconnected and s.storage.committed == []
    s, transport = run(check_checksums=False, decoder=zrs.MessageDecoder(
        zrs.resolve_globals(['decimal.Decimal'])))
    assert not transport.disconnected and s.storage.committed == [TID1]


# -- reconnecting ------------------------------------------------------------

def test_backoff_grows_across_refused_connections(caplog):
    s = Setup()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        s.client.start()
        delays = []
        for _ in range(9):
            s.refuse()
            delays.append(s.reconnect_delay())
            s.wait_for_attempt()
    assert delays[0] == 1.0
    assert all(b > a for a, b in zip(delays[:6], delays[1:7])), delays
    assert all(1.0 <= d <= 60.0 for d in delays), delays
    assert 45.0 <= delays[-1] <= 60.0  # capped (jitter at most 25 %)
    # Repeated identical failures are not logged every time.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) < 9
    assert 'cannot connect' in warnings[0].getMessage()


@pytest.mark.parametrize('connected', [
    lambda s, proto: proto.dataReceived(Stream(z64).one(TID1).wire()),
    lambda s, proto: s.clock.advance(3600),  # an hour, primary idle
], ids=['a-committed-transaction', 'a-long-quiet-connection'])
def test_backoff_reset_after(connected):
    s = Setup(keep_alive_delay=0)
    s.client.start()
    for _ in range(4):
        s.refuse()
        s.wait_for_attempt()
    proto, transport = s.accept()
    connected(s, proto)
    lost(proto)
    assert s.reconnect_delay() == 1.0


@pytest.mark.parametrize('after, refusals, at_max', [
    (0, 5, True), (client.REFUSAL_WINDOW + 1, 0, False),
], ids=['at-once', 'late'])
def test_closes_after_the_handshake(after, refusals, at_max):
    """Closing at once is a refusal (maximum delay), long after is not."""
    s = Setup()
    s.client.start()
    delays = []
    for _ in range(5):
        proto, transport = s.accept()
        s.clock.advance(after)
        lost(proto, error.ConnectionDone('closed'))
        delays.append(s.reconnect_delay())
        s.wait_for_attempt()
    assert delays[0] == 1.0 and delays[0] < delays[1] < 60.0, delays
    assert (delays[2:] == pytest.approx([60.0] * 3)) == at_max, delays
    assert (s.client.refusals, s.client.refused) == (refusals, at_max)


def test_refused_after_three_closes_right_after_the_handshake(caplog):
    s = Setup(TID1)
    s.client.start()
    for attempt in range(1, 4):
        assert not s.client.refused and s.client.state != 'refused'
        proto, transport = s.accept()
        assert transport.value().endswith(TID1)   # the handshake went out
        lost(proto)
        assert s.client.refusals == attempt
        s.wait_for_attempt()
    assert s.client.refused and s.client.state == 'refused'
    [line] = errors(caplog)
    assert TID1.hex() in line and 'refused: the primary closed the link ' \
        'right after the handshake 3 times in a row' in line
    # Refused again: no new ERROR.
    lost(s.accept()[0])
    assert len(errors(caplog)) == 1
    # A primary that sends something accepts us again.
    s.wait_for_attempt()
    s.accept()[0].dataReceived(b'\0')
    assert (s.client.refused, s.client.refusals, s.client.state) == (
        False, 0, 'streaming')


def test_backoff_after_stream_failure():
    s = Setup()
    proto, transport = s.start()
    proto.dataReceived(Stream(z64).one(TID1, digest=BAD_DIGEST).take())
    assert transport.disconnected
    lost(proto)
    first = s.reconnect_delay()
    s.wait_for_attempt()
    proto, transport = s.accept()
    proto.dataReceived(Stream(z64).one(TID1, digest=BAD_DIGEST).take())
    lost(proto)
    assert s.reconnect_delay() > first and s.client.stream_failures == 2


# -- stopping -------------------------------------------------------------

@pytest.mark.parametrize('refused', [True, False],
                         ids=['pending-reconnect', 'while-connecting'])
def test_stop_before_connected(refused):
    """Stopping cancels the attempt or the reconnect: none follows."""
    s = Setup()
    s.client.start()
    attempt = s.attempts[-1][1]
    if refused:
        s.refuse()
        assert len(s.clock.getDelayedCalls()) == 1
    s.client.stop()
    assert attempt.called  # refused, or cancelled
    assert s.clock.getDelayedCalls() == []
    s.clock.advance(3600)
    assert len(s.attempts) == 1


def test_stop_aborts_half_received_transaction():
    s = Setup()
    proto, transport = s.start()
    primary = Stream(z64)
    proto.dataReceived(primary.one(TID1).take())
    proto.dataReceived(primary.begin(TID2).store(OID1, TID2, b'x').take())
    s.client.stop()
    assert s.storage.calls[-1] == ('abort', TID2)
    assert s.storage.committed == [TID1] and transport.disconnected
    # More data before the connection is really gone changes nothing.
    proto.dataReceived(primary.commit().take())
    assert s.storage.committed == [TID1]
    lost(proto)
    assert s.storage.names().count('abort') == 1
    assert s.clock.getDelayedCalls() == []  # no reconnect, no keep-alive
    s.clock.advance(3600)
    assert len(s.attempts) == 1 and transport.value() == handshake(z64)


# -- group commit ---------------------------------------------------------

def test_fsync_deferred_while_more_data_waits(tcp):
    """Commits are fsynced when the socket has nothing more to read."""
    sender, receiver = tcp
    s = Setup(TID1)
    proto, transport = s.start(receiver)
    assert s.storage.defer_sync
    primary = Stream(TID1)
    # More of the stream is already waiting in the kernel: no fsync.
    sender.sendall(b'more')
    wait_until(lambda: pending_bytes(receiver) == 4)
    proto.dataReceived(primary.one(TID2).one(TID3).take())
    assert s.storage.committed == [TID2, TID3]
    assert (s.storage.syncs, s.storage.unsynced) == (0, 2)
    # The stream pauses (nothing waiting): one fsync for both.
    assert receiver.recv(10) == b'more'
    proto.dataReceived(primary.one(TID4).take())
    assert (s.storage.syncs, s.storage.unsynced) == (1, 0)
    # Losing the connection syncs what is left and stops deferring.
    sender.sendall(b'more')
    wait_until(lambda: pending_bytes(receiver) == 4)
    proto.dataReceived(primary.one(TID5).take())
    assert s.storage.unsynced == 1
    lost(proto)
    assert (s.storage.syncs, s.storage.unsynced, s.storage.defer_sync) == (
        2, 0, False)
