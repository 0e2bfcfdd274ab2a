"""Hostile secondaries of the primary side: the model of the primary's
handshake rules (`expect_from_primary`), a raw connection to the primary
(`RawSecondary`), and the case kinds, each a function of the `PrimarySide`,
a `random.Random` and the kind's name."""
import contextlib
import socket
import struct

from ZODB.utils import z64

from harness.stream import frame
from zrsd import protocol as zrs

from .nodes import IO_TIMEOUT
from .results import LaneAbort


def expect_from_primary(data, tids):
    """What a zrsd primary (without blobs) does with `data` from a new
    secondary, if the secondary then waits; `tids` are the primary's
    transactions (it is never packed here).

    Returns ('refuse', reasons), ('stream', start_tid) or ('incomplete',
    None); `reasons` is a tuple of texts, one of which the ERROR names.
    The rules: frames of at most 64 bytes; a protocol name; an 8-byte tid
    that is zero or one of `tids` (the history guard); then only empty
    frames.  The history guard runs in the primary's streamer thread, so a
    violation that follows a refused tid may be the one named instead.
    """
    pos, phase, start, forked = 0, 'protocol', None, ()
    while len(data) - pos >= 4:
        (n,) = struct.unpack_from('>I', data, pos)
        if n > 64:
            return 'refuse', forked + ('frame of %d bytes is too large' % n,)
        if len(data) - pos - 4 < n:
            break
        payload = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        if phase == 'protocol':
            if payload not in zrs.PROTOCOLS:
                return 'refuse', ('unknown protocol',)
            phase = 'tid'
        elif phase == 'tid':
            if len(payload) != 8:
                return 'refuse', ('start tid of %d bytes' % len(payload),)
            if payload != z64 and payload not in tids:
                forked = ('its last transaction %s is not in this storage'
                          % payload.hex(),)
            phase, start = 'stream', payload
        elif payload:
            return 'refuse', forked + (
                'unexpected %d-byte message after the handshake'
                % len(payload),)
    if forked:
        return 'refuse', forked
    if phase == 'stream':
        return 'stream', start
    return 'incomplete', None


class RawSecondary:
    """A raw socket to the primary's replication port."""

    def __init__(self, side):
        self.side = side
        self.sock = socket.create_connection(
            ('127.0.0.1', side.primary.repl_port), timeout=IO_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        side.log.poll()
        self.first = len(side.log.ports[self.port])
        side.ports.add(self.port)
        side.summary.add('primary', 'connections')
        self.buffer = b''
        self.dribble = 0     # bytes still to send, one per case (slow-loris)

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def wait_closed(self):
        """Read until the primary closes; False if it does not."""
        try:
            while self.sock.recv(1 << 16):
                pass
        except socket.timeout:
            return False
        except OSError:
            pass
        return True

    def close(self, reset=False):
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack('ii', 1, 0))
        self.sock.close()

    def records(self):
        self.side.log.poll()
        return self.side.log.ports[self.port][self.first:]

    def next_frame(self):
        while True:
            if len(self.buffer) >= 4:
                (n,) = struct.unpack_from('>I', self.buffer)
                if len(self.buffer) >= 4 + n:
                    payload = self.buffer[4:4 + n]
                    self.buffer = self.buffer[4 + n:]
                    return payload
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError('the primary closed the connection')
            self.buffer += chunk


def random_bytes(side, rng, kind):
    data = rng.randbytes(rng.randint(1, 120))
    if rng.random() < 0.5:
        data = b'\0\0\0' + bytes([rng.randint(0, 70)]) + data
    side.single(data, kind)


def random_frames(side, rng, kind):
    data = b''
    for _ in range(rng.randint(1, 5)):
        data += frame(rng.choice([
            b'zrs2.0', b'zrs2.1', b'zrs2.0\0', b'ZRS2.0', b'',
            rng.randbytes(8), side.some_tid(rng),
            rng.randbytes(rng.randint(0, 80))]))
    side.single(data, kind, verify=True)


def random_tid(side, rng, kind):
    data = frame(rng.choice(zrs.PROTOCOLS)) + frame(side.some_tid(rng))
    data += frame(b'') * rng.choice([0, 0, 1, 3])
    side.single(data, kind, verify=True)


def junk_after_handshake(side, rng, kind):
    data = frame(rng.choice(zrs.PROTOCOLS)) + frame(
        side.some_tid(rng, valid=True))
    data += frame(b'') * rng.randint(0, 3)
    if rng.random() < 0.8:
        data += frame(rng.randbytes(rng.randint(1, 64)))
    else:
        data += struct.pack('>I', rng.randint(65, (1 << 32) - 1))
    side.single(data, kind)


def keepalives_partial(side, rng, kind):
    data = frame(rng.choice(zrs.PROTOCOLS)) + frame(
        side.some_tid(rng, valid=True))
    data += frame(b'') * rng.randint(0, 5)
    data += rng.choice([b'\0', b'\0\0\0', b'\0\0\0\x05ab'])
    side.single(data, kind, verify=True, reset=rng.random() < 0.5)


def oversized_first(side, rng, kind):
    side.single(struct.pack('>I', rng.randint(65, (1 << 32) - 1))
                + rng.randbytes(rng.randint(0, 50)), kind)


def half_close(side, rng, kind):
    data = frame(rng.choice(zrs.PROTOCOLS))
    if rng.random() < 0.7:
        data += frame(side.some_tid(rng, valid=True))
    conn = RawSecondary(side)
    conn.send(data)
    with contextlib.suppress(OSError):
        conn.sock.shutdown(socket.SHUT_WR)
    if not conn.wait_closed():
        side.violation('hangs', '%s: the primary kept a half-closed '
                       'connection' % kind)
        raise LaneAbort()
    conn.close()
    expect, reasons = expect_from_primary(data, side.history)
    if expect == 'refuse':
        # Our close may reach the primary before its history guard
        # has decided: then it just disconnects.
        expect = 'refuse-or-not'
    side.judge(conn, expect, reasons, kind)


def reset_mid_stream(side, rng, kind):
    conn = RawSecondary(side)
    conn.send(frame(b'zrs2.0') + frame(z64))
    with contextlib.suppress(OSError, EOFError):
        for _ in range(rng.randint(1, 20)):
            conn.next_frame()
    conn.close(reset=True)
    side.judge(conn, 'stream', None, kind)


def storm(side, rng, kind):
    actions = ['close', 'reset', 'partial', 'partial-reset',
               'handshake', 'handshake-reset', 'refuse']
    conns = [(RawSecondary(side), rng.choice(actions))
             for _ in range(rng.randint(5, 40))]
    sent = {}
    for conn, action in conns:
        if action.startswith('partial'):
            conn.send(frame(b'zrs2.0')[:rng.randint(1, 9)])
        elif action.startswith('handshake'):
            sent[conn] = frame(b'zrs2.0') + frame(
                side.some_tid(rng, valid=True))
            conn.send(sent[conn])
        elif action == 'refuse':
            conn.send(frame(b'zrs9.9'))
    for conn, action in conns:
        if action == 'refuse' and not conn.wait_closed():
            side.violation('hangs', 'storm: a refused connection was '
                           'kept')
            raise LaneAbort()
        conn.close(reset=action.endswith('reset'))
    for conn, action in conns:
        if action == 'refuse':
            side.judge(conn, 'refuse', ('unknown protocol',), kind)
        elif action.startswith('handshake'):
            # A tid outside the history: refused, unless our close
            # came first.
            expect, reasons = expect_from_primary(sent[conn],
                                                  side.history)
            side.judge(conn, 'refuse-or-not' if expect == 'refuse'
                       else 'stream', reasons, kind)
        else:
            side.judge(conn, 'incomplete', None, kind)


# The case kinds (some more often than others), and what runs each.
KINDS = [
    'random-bytes', 'random-bytes', 'random-frames', 'random-frames',
    'random-tid', 'random-tid', 'random-tid', 'junk-after-handshake',
    'junk-after-handshake', 'keepalives-partial', 'oversized-first',
    'half-close', 'reset-mid-stream', 'storm']

RUN = {
    'random-bytes': random_bytes,
    'random-frames': random_frames,
    'random-tid': random_tid,
    'junk-after-handshake': junk_after_handshake,
    'keepalives-partial': keepalives_partial,
    'oversized-first': oversized_first,
    'half-close': half_close,
    'reset-mid-stream': reset_mid_stream,
    'storm': storm,
}
