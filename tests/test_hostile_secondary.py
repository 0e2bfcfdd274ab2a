"""Hostile secondaries on raw sockets: the zrsd primary logs one ERROR with
the reason and keeps serving its real replica on its one connection."""
import pickle
import socket
import struct

import pytest
from ZODB.utils import p64, u64, z64

from harness import peers, stream, zczrs
from harness.stream import Reader, frame
from harness.history import transactions
from harness.process import stop_all, wait_until
from harness.zrsd_nodes import MB, ZrsdNode, process_memory

HANDSHAKE_TIMEOUT = '  handshake-timeout 2\n'


def hello(tid, protocol=b'zrs2.0'):
    """A secondary's handshake: its protocol, its last tid."""
    return frame(protocol) + frame(tid)


class Setup:
    """The primary, the legit replica and a client of the replica (one for
    the module: ZEO logs each client disconnecting)."""

    def __init__(self, directory, register):
        self.primary = ZrsdNode(directory, 'primary', register=register,
                                zrs_lines=HANDSHAKE_TIMEOUT).start()
        zczrs.populate(self.primary.zeo_address, transactions=100,
                       undo_every=40)
        self.replica = ZrsdNode(directory, 'replica', register=register,
                                upstream=self.primary.repl_port).start()
        self.client = self.replica.client()
        peers.wait_for_tid(self.client, self.primary.last_tid(),
                           [self.primary, self.replica])

    def assert_replica_follows(self):
        """The primary alive, a new commit reaching the replica, which
        never lost its original connection."""
        self.primary.check_alive()
        peers.wait_for_tid(self.client, self.primary.commit('hostile', 1),
                           [self.primary, self.replica])
        log = self.replica.log()
        assert log.count(': connected (zrs2.0)') == 1, log
        assert 'disconnected' not in log, log


@pytest.fixture(scope='module')
def setup(tmp_path_factory, module_processes):
    setup = Setup(tmp_path_factory.mktemp('hostile'), module_processes)
    yield setup
    setup.client.close()
    stop_all(setup.replica, setup.primary)


@pytest.fixture(scope='module')
def blob_primary(tmp_path_factory, module_processes):
    """A second zrsd primary, with a blob directory."""
    primary = ZrsdNode(tmp_path_factory.mktemp('hostile-blobs'), 'primary',
                       blobs=True, zrs_lines=HANDSHAKE_TIMEOUT,
                       register=module_processes)
    yield primary.start()
    primary.stop()


class RawSecondary(stream.RawSecondary):
    """A raw socket to a primary's replication port, and the lines the
    primary logged about it since it connected."""

    def log_lines(self):
        return [record.line for record in self.records()]

    def error_lines(self):
        return [record.line for record in self.records() if record.is_error]

    def wait_for_log(self, text):
        wait_until(lambda: any(text in line for line in self.log_lines()),
                   30, message='%r about port %d' % (text, self.port))

    def refused(self, data, reason):
        """Send `data`; the primary closes the connection (how: returned)
        and logs one ERROR line (returned) naming `reason` and the close."""
        if data:
            self.sendall(data)
        ended = self.wait_closed()
        lines = wait_until(self.error_lines, 30,
                           message='ERROR line about port %d' % self.port)
        assert len(lines) == 1, lines
        assert reason in lines[0], lines[0]
        assert 'closing the connection' in lines[0], lines[0]
        return ended, lines[0]

    def read_until_transaction(self, tid):
        """Follow the stream (plain pickles: our primary) until the 'T' of
        `tid`; 'S' is followed by one frame, 'B' by one and its blocks."""
        reader = Reader(self)

        def next_frame():
            payload = reader.frame(30)
            assert payload is not None, 'primary closed port %d' % self.port
            return payload
        while True:
            kind, data = pickle.loads(next_frame())
            if kind == 'T' and data[0] == tid:
                return
            for _ in range(1 + data[-1] if kind == 'B' else kind == 'S'):
                next_frame()


TOO_LARGE = 'frame of %d bytes is too large (limit 64)'
HOSTILE = {
    # name: (bytes sent, reason expected in the ERROR line)
    'oversized-first-frame': (b'\x7f\xff\xff\xff', TOO_LARGE % 2147483647),
    'garbage-tls-client-hello': (
        b'\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' + bytes(range(32)),
        TOO_LARGE % struct.unpack('>I', b'\x16\x03\x01\x02')[0]),
    'garbage-http': (b'GET / HTTP/1.1\r\nHost: primary\r\n\r\n',
                     TOO_LARGE % struct.unpack('>I', b'GET ')[0]),
    'unknown-protocol': (hello(z64, b'zrs9.9'), "unknown protocol b'zrs9.9'"),
    'nine-byte-tid': (hello(b'\0' * 9), 'start tid of 9 bytes, expected 8'),
    'tid-from-the-future': (
        hello(b'\xff' * 8), 'its last transaction ffffffffffffffff is not '
        'in this storage (the transaction before it is '),
    'tid-from-the-future-names-primary-last': (   # its real last tid
        hello(b'\xff' * 8), 'the transaction before it is {last}, that is '
        'the last transaction here'),
    'message-after-handshake': (
        hello(z64) + frame(b'hello'),
        'unexpected 5-byte message after the handshake'),
    'no-handshake-within-timeout': (b'', 'no handshake within 2.0s'),
    'half-handshake-within-timeout': (   # the timeout covers it all
        frame(b'zrs2.0') + b'\0\0', 'no handshake within 2.0s'),
}


@pytest.mark.parametrize('case', sorted(HOSTILE))
def test_hostile_bytes(setup, case):
    data, reason = HOSTILE[case]
    reason = reason.format(last=setup.primary.last_tid().hex())
    with RawSecondary(setup.primary) as hostile:
        ended, text = hostile.refused(data, reason)
    print('\n%s: %s; %s' % (case, ended, text.split(' ERROR ', 1)[1]))
    setup.assert_replica_follows()


def test_tid_not_in_history(setup):
    """A forked tid is refused, naming both neighbours, before any data."""
    before, after = [t.tid for t in transactions(setup.primary.fs_path)][-3:-1]
    forked = p64(u64(before) + 1)
    assert before < forked < after
    with RawSecondary(setup.primary) as hostile:
        hostile.refused(hello(forked), 'its last transaction %s is not in '
                        'this storage (the transaction before it is %s, the '
                        'one after it %s)' % (
                            forked.hex(), before.hex(), after.hex()))
        assert hostile.received == 0
    setup.assert_replica_follows()


def test_keep_alives_are_accepted(setup):
    """The control: empty frames after the handshake are keep-alives."""
    last = setup.primary.last_tid()
    with RawSecondary(setup.primary) as secondary:
        secondary.sendall(hello(last) + frame(b'') * 3)
        secondary.wait_for_log('streaming transactions after ' + last.hex())
        secondary.sendall(frame(b''))
        secondary.read_until_transaction(setup.primary.commit('hostile', 1))
        assert not secondary.error_lines()
    setup.assert_replica_follows()


def test_zrs20_against_blob_primary(setup, blob_primary):
    """A primary with blobs refuses zrs2.0 and serves zrs2.1."""
    with RawSecondary(blob_primary) as hostile:
        hostile.refused(hello(z64),
                        'secondary speaks zrs2.0, but this storage has blobs')
    blob_primary.check_alive()
    with RawSecondary(blob_primary) as secondary:
        secondary.sendall(hello(z64, b'zrs2.1'))
        secondary.read_until_transaction(blob_primary.commit('after', 1))
        assert not secondary.error_lines()
    setup.assert_replica_follows()


def test_secondary_that_never_reads(setup):
    """A secondary that never reads while 16 MB are committed stays."""
    primary = setup.primary
    rss_before = process_memory(primary.pid)[0]
    with RawSecondary(primary, rcvbuf=4096) as stalled:
        stalled.sendall(hello(z64))
        stalled.wait_for_log('streaming transactions after 0000000000000000')
        for i in range(8):   # far more than the socket buffers hold
            primary.commit('big', bytes([i]) * (2 << 20))
        setup.assert_replica_follows()
        rss_after = process_memory(primary.pid)[0]
        assert not [line for line in stalled.log_lines()
                    if 'disconnected' in line or ' ERROR ' in line], \
            stalled.log_lines()
        stalled.setblocking(False)
        assert stalled.recv(1, socket.MSG_PEEK) == b'\0'  # a length
        print('\nstalled reader: primary VmRSS %.1f MB before, %.1f MB after'
              ' committing 16 MB' % (rss_before / MB, rss_after / MB))
    stalled.wait_for_log('disconnected')
    setup.assert_replica_follows()


def test_max_secondaries(node):
    """Over `max-secondaries` a connection is refused; a freed place not."""
    primary = node('capped', zrs_lines='  max-secondaries 2\n'
                   + HANDSHAKE_TIMEOUT).start()
    first = primary.commit('k', 1)
    replica = node('replica', upstream=primary.repl_port).start()
    replica.wait_for_tid(first)
    with RawSecondary(primary) as second:
        second.sendall(hello(first))
        second.wait_for_log('streaming transactions after ' + first.hex())
        with RawSecondary(primary) as third:
            third.refused(b'', 'more than max-secondaries (2) secondaries;'
                          ' refusing this one')
        assert not second.error_lines()
        tid = primary.commit('k', 2)
        replica.wait_for_tid(tid)
        second.read_until_transaction(tid)
    with RawSecondary(primary) as fourth:   # there is room again
        fourth.sendall(hello(tid))
        fourth.wait_for_log('streaming transactions after ' + tid.hex())
