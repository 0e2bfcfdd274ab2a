"""Hostile secondaries against a zrsd primary.

One zrsd primary with some history and one real zrsd replica replicating
from it (module fixture).  Each test opens a raw socket to the primary's
replication port and misbehaves.  The primary must log one ERROR line naming
the reason (found by the socket's own port, which the primary logs as the
peer), drop that connection, keep running, and the replica must stay on its
one original connection and receive a commit made afterwards.
"""
import fcntl
import pickle
import socket
import struct
import termios
import time

import pytest
import transaction
import ZEO
import ZODB.FileStorage
from ZODB.utils import p64, u64
from persistent.mapping import PersistentMapping

from harness import peers, zczrs
from harness.process import wait_until
from harness.zrsd_nodes import ZrsdNode

Z64 = b'\0' * 8
MB = 1024.0 * 1024.0
HANDSHAKE_TIMEOUT = '  handshake-timeout 2\n'


def frame(payload):
    return struct.pack('>I', len(payload)) + payload


class Setup:
    """The primary, the legit replica and a client of the replica."""

    def __init__(self, primary, replica, replica_client):
        self.primary = primary
        self.replica = replica
        self.replica_client = replica_client
        self.commits = 0

    def commit(self, value='x'):
        """One small commit on the primary; returns its tid."""
        self.commits += 1
        return zczrs.commit_change(self.primary.zeo_address,
                                   'hostile-%d' % self.commits, value)

    def assert_replica_follows(self):
        """Both processes alive, a new commit reaches the replica, and the
        replica never lost its original connection."""
        assert self.primary.running(), self.primary.log()
        tid = self.commit()
        peers.wait_for_tid(self.replica_client, tid,
                           [self.primary, self.replica],
                           message='replica at %s' % tid.hex())
        log = self.replica.log()
        assert log.count(': connected (zrs2.0)') == 1, log
        assert 'disconnected' not in log, log


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp('hostile')
    primary = ZrsdNode(directory, 'primary', zrs_lines=HANDSHAKE_TIMEOUT)
    replica = ZrsdNode(directory, 'replica', upstream=primary.repl_port)
    client = None
    try:
        primary.start()
        zczrs.populate(primary.zeo_address, transactions=100, undo_every=40)
        replica.start()
        client = replica.client()
        peers.wait_for_tid(client, primary.last_tid(), [primary, replica])
        yield Setup(primary, replica, client)
        client.close()
        client = None
        assert replica.stop() == 0, replica.log()
        assert primary.stop() == 0, primary.log()
    finally:
        if client is not None:
            client.close()
        replica.close()
        primary.close()


@pytest.fixture(scope='module')
def blob_primary(tmp_path_factory):
    """A second zrsd primary, with a blob directory."""
    primary = ZrsdNode(tmp_path_factory.mktemp('hostile-blobs'), 'primary',
                       blobs=True, zrs_lines=HANDSHAKE_TIMEOUT)
    try:
        primary.start()
        yield primary
        assert primary.stop() == 0, primary.log()
    finally:
        primary.close()


class RawSecondary:
    """A raw socket to a primary's replication port, and what the primary
    logged about it (only lines logged after it connected)."""

    def __init__(self, primary, rcvbuf=None):
        self.primary = primary
        self.log_offset = len(primary.log())
        self.sock = socket.socket()
        if rcvbuf is not None:
            # Before connect, so that the window is negotiated small.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        # A primary that refuses at once may reset the connection before
        # connect() returns.
        self.reset_at_connect = False
        try:
            self.sock.connect(('127.0.0.1', primary.repl_port))
        except ConnectionResetError:
            self.reset_at_connect = True
        # How the primary names this connection in its log.
        self.name = '-> 127.0.0.1:%d: ' % self.sock.getsockname()[1]
        self.received = 0   # bytes read (and discarded) by wait_closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def log_lines(self):
        """The primary's log lines about this connection."""
        return [line for line in
                self.primary.log()[self.log_offset:].splitlines()
                if self.name in line]

    def error_lines(self):
        return [line for line in self.log_lines() if ' ERROR ' in line]

    def wait_for_log(self, text):
        wait_until(lambda: any(text in line for line in self.log_lines()),
                   30, message='%r about %s' % (text, self.name))

    def wait_closed(self, timeout=30.0):
        """Read (and discard) until the primary closes the connection.

        Returns how it ended: 'eof' or 'reset'.  Fails after `timeout`.
        """
        if self.reset_at_connect:
            return 'reset'
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError('the primary did not close %s' %
                                     self.name)
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return 'reset'
            except socket.timeout:
                continue
            if not data:
                return 'eof'
            self.received += len(data)

    def wait_error(self, reason):
        """Wait for the primary's one ERROR line about this connection,
        check it names `reason`; return it."""
        lines = wait_until(self.error_lines, 30,
                           message='ERROR line about %s' % self.name)
        assert len(lines) == 1, lines
        text = lines[0]
        assert reason in text, text
        assert 'closing the connection' in text, text
        return text

    def read_until_transaction(self, tid):
        """Follow the stream until the 'T' message of `tid`.

        The primary is ours, so plain `pickle` is fine here.  'S' is
        followed by one data frame, 'B' by one data frame and `nblocks`
        blob frames.
        """
        buffer = bytearray()

        def next_frame():
            while True:
                if len(buffer) >= 4:
                    (length,) = struct.unpack_from('>I', buffer)
                    if len(buffer) >= 4 + length:
                        payload = bytes(buffer[4:4 + length])
                        del buffer[:4 + length]
                        return payload
                chunk = self.sock.recv(1 << 16)
                assert chunk, 'the primary closed %s' % self.name
                buffer.extend(chunk)

        while True:
            kind, data = pickle.loads(next_frame())
            if kind == 'T' and data[0] == tid:
                return
            if kind == 'S':
                next_frame()
            elif kind == 'B':
                for _ in range(1 + data[-1]):
                    next_frame()

    def queued(self):
        """Bytes waiting unread in our receive queue."""
        raw = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b'\0' * 4)
        return struct.unpack('i', raw)[0]


HOSTILE = {
    # name: (bytes sent, reason expected in the ERROR line)
    'oversized-first-frame': (
        b'\x7f\xff\xff\xff',
        'frame of 2147483647 bytes is too large (limit 64)'),
    'garbage-tls-client-hello': (
        b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + bytes(range(32)),
        'frame of %d bytes is too large (limit 64)'
        % struct.unpack('>I', b'\x16\x03\x01\x02')[0]),
    'garbage-http': (
        b'GET / HTTP/1.1\r\nHost: primary\r\n\r\n',
        'frame of %d bytes is too large (limit 64)'
        % struct.unpack('>I', b'GET ')[0]),
    'unknown-protocol': (
        frame(b'zrs9.9') + frame(Z64),
        "unknown protocol b'zrs9.9'"),
    'nine-byte-tid': (
        frame(b'zrs2.0') + frame(b'\0' * 9),
        'start tid of 9 bytes, expected 8'),
    'tid-from-the-future': (
        frame(b'zrs2.0') + frame(b'\xff' * 8),
        'its last transaction ffffffffffffffff is not in this storage (the '
        'transaction before it is '),
    'message-after-handshake': (
        frame(b'zrs2.0') + frame(Z64) + frame(b'hello'),
        'unexpected 5-byte message after the handshake'),
}


@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_hostile_bytes(setup, case):
    data, reason = HOSTILE[case]
    with RawSecondary(setup.primary) as hostile:
        hostile.send(data)
        ended = hostile.wait_closed()
        text = hostile.wait_error(reason)
    print('\n%s: %s; %s' % (case, ended, text.split(' ERROR ', 1)[1]))
    setup.assert_replica_follows()


def test_tid_from_the_future_names_primary_last(setup):
    """The refusal names the primary's real last tid."""
    last = setup.primary.last_tid()
    with RawSecondary(setup.primary) as hostile:
        hostile.send(frame(b'zrs2.0') + frame(b'\xff' * 8))
        hostile.wait_closed()
        hostile.wait_error('the transaction before it is %s, that is the '
                           'last transaction here' % last.hex())
    setup.assert_replica_follows()


def test_tid_not_in_history(setup):
    """The history guard: a tid between two of the primary's transactions
    (a forked history) is refused, and the line names both neighbours."""
    fs = ZODB.FileStorage.FileStorage(setup.primary.fs_path, read_only=True)
    try:
        tids = [txn.tid for txn in fs.iterator()][-3:-1]
    finally:
        fs.close()
    forked = p64(u64(tids[0]) + 1)
    assert tids[0] < forked < tids[1]
    with RawSecondary(setup.primary) as hostile:
        hostile.send(frame(b'zrs2.0') + frame(forked))
        hostile.wait_closed()
        text = hostile.wait_error(
            'its last transaction %s is not in this storage (the transaction '
            'before it is %s, the one after it %s)' % (
                forked.hex(), tids[0].hex(), tids[1].hex()))
        assert hostile.received == 0
    print('\nforked tid: %s' % text.split(' ERROR ', 1)[1])
    setup.assert_replica_follows()


def test_no_handshake_within_timeout(setup):
    """Connect and say nothing: dropped after handshake-timeout (2 s)."""
    with RawSecondary(setup.primary) as hostile:
        ended = hostile.wait_closed(timeout=30)
        hostile.wait_error('no handshake within 2.0s')
    print('\nno handshake: %s' % ended)
    setup.assert_replica_follows()


def test_half_handshake_within_timeout(setup):
    """Protocol name and half a tid frame, then nothing: the timeout covers
    the whole handshake."""
    with RawSecondary(setup.primary) as hostile:
        hostile.send(frame(b'zrs2.0') + b'\0\0')
        hostile.wait_closed(timeout=30)
        hostile.wait_error('no handshake within 2.0s')
    setup.assert_replica_follows()


def test_keep_alives_are_accepted(setup):
    """The control case: empty frames after the handshake are keep-alives;
    such a secondary stays connected and gets the next commit."""
    last = setup.primary.last_tid()
    with RawSecondary(setup.primary) as secondary:
        secondary.send(frame(b'zrs2.0') + frame(last) + frame(b'') * 3)
        secondary.wait_for_log('streaming transactions after ' + last.hex())
        secondary.send(frame(b''))
        tid = setup.commit()
        secondary.read_until_transaction(tid)
        assert not secondary.error_lines()
    setup.assert_replica_follows()


def test_zrs20_against_blob_primary(setup, blob_primary):
    """A primary with blobs refuses a secondary without (zrs2.0) and keeps
    serving a zrs2.1 one."""
    with RawSecondary(blob_primary) as hostile:
        hostile.send(frame(b'zrs2.0') + frame(Z64))
        hostile.wait_closed()
        hostile.wait_error(
            'secondary speaks zrs2.0, but this storage has blobs')
    assert blob_primary.running(), blob_primary.log()

    with RawSecondary(blob_primary) as secondary:
        secondary.send(frame(b'zrs2.1') + frame(Z64))
        tid = zczrs.commit_change(blob_primary.zeo_address, 'after', 1)
        secondary.read_until_transaction(tid)
        assert not secondary.error_lines()
    setup.assert_replica_follows()


def commit_big(address, count, size):
    """`count` transactions each writing a new object of `size` bytes
    (replacing the previous one under root['big']); returns bytes written."""
    db = ZEO.DB(address)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        for i in range(count):
            tm.begin()
            conn.root()['big'] = PersistentMapping(
                data=bytes([i % 256]) * size)
            tm.get().note('big %d' % i)
            tm.commit()
        return count * size
    finally:
        tm.abort()
        conn.close()
        db.close()


def rss_kb(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])


def test_secondary_that_never_reads(setup):
    """A secondary that handshakes from tid zero and then never reads, with a
    tiny receive buffer, while 16 MB are committed: the primary keeps it
    connected and keeps serving the legit replica.  (Memory is reported,
    not asserted.)"""
    primary = setup.primary
    rss_before = rss_kb(primary.pid)
    stalled = RawSecondary(primary, rcvbuf=4096)
    try:
        stalled.send(frame(b'zrs2.0') + frame(Z64))
        stalled.wait_for_log('streaming transactions after 0000000000000000')
        # Far more than the socket buffers can hold.
        committed = commit_big(primary.zeo_address, count=8, size=2 << 20)
        setup.assert_replica_follows()
        rss_after = rss_kb(primary.pid)
        assert not [line for line in stalled.log_lines()
                    if 'disconnected' in line or ' ERROR ' in line], \
            stalled.log_lines()
        stalled.sock.setblocking(False)
        assert stalled.sock.recv(1, socket.MSG_PEEK) == b'\0'  # a length
        print('\nstalled reader: primary VmRSS %.1f MB before, %.1f MB after'
              ' committing %.0f MB (%d bytes queued at the reader)' % (
                  rss_before / 1024.0, rss_after / 1024.0, committed / MB,
                  stalled.queued()))
    finally:
        stalled.close()
    stalled.wait_for_log('disconnected')
    setup.assert_replica_follows()


def test_max_secondaries(tmp_path, processes):
    """Over `max-secondaries`, a connection is refused at once (one ERROR);
    the secondaries already connected keep following; a place freed is
    taken again."""
    primary = ZrsdNode(tmp_path, 'capped', register=processes,
                       zrs_lines='  max-secondaries 2\n' + HANDSHAKE_TIMEOUT)
    primary.start()
    first = zczrs.commit_change(primary.zeo_address, 'k', 1)
    replica = ZrsdNode(tmp_path, 'replica', upstream=primary.repl_port,
                       register=processes).start()
    replica.wait_for_tid(first)
    with RawSecondary(primary) as second:
        second.send(frame(b'zrs2.0') + frame(first))
        second.wait_for_log('streaming transactions after ' + first.hex())
        with RawSecondary(primary) as third:
            third.wait_closed()
            text = third.wait_error('more than max-secondaries (2) '
                                    'secondaries; refusing this one')
        assert not second.error_lines()
        tid = zczrs.commit_change(primary.zeo_address, 'k', 2)
        replica.wait_for_tid(tid)
        second.read_until_transaction(tid)
    # The second one has gone: there is room again.
    with RawSecondary(primary) as fourth:
        fourth.send(frame(b'zrs2.0') + frame(tid))
        fourth.wait_for_log('streaming transactions after ' + tid.hex())
    print('\n' + text.split(' ERROR ', 1)[1])
