"""A primary's ZRS stream read off a socket (catch-up row (e),
--lag-probe): 4-byte sized frames, pickled messages; raw data frames
follow an S (record) or B (blob) message."""
import pickle
import socket
import struct
import time

from harness.stream import frame


def connect(port, start_tid, timeout=None, protocol=b'zrs2.0'):
    """A socket to a primary's ZRS port, the handshake sent."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(frame(protocol) + frame(start_tid))
    return sock


class StreamReader:
    """Reads a stream as fast as it can, unpickling only the T and B
    messages (the message type is the 7th byte of the protocol-1 pickle
    `(X\\x01\\0\\0\\0T...`); `frames`, `transactions` and `bytes` count
    what it read up to the last C message it gave out."""

    def __init__(self, sock):
        self.sock = sock
        self.frames = self.transactions = self.bytes = 0

    def commits(self, stop=None):
        """(tid, time.monotonic() of the recv that brought it) per C
        message, until the end of the stream, or until `stop()`, asked
        before each recv (and when the socket timed out)."""
        buf = bytearray(4 << 20)
        view = memoryview(buf)
        start = end = 0
        raw = frames = transactions = total = 0     # raw: data frames due
        tid = received_at = None
        prefix, unpack = b'(X\x01\x00\x00\x00', struct.unpack_from
        while True:
            need = 4
            while end - start >= 4:
                (size,) = unpack('>I', buf, start)
                if end - start - 4 < size:
                    need = size + 4
                    break
                first = start + 4
                start = first + size
                frames += 1
                if raw:
                    raw -= 1
                    continue
                if buf[first:first + 6] == prefix:
                    kind = buf[first + 6]
                else:
                    kind = ord(pickle.loads(view[first:start])[0])
                if kind == 0x53:            # S
                    raw = 1
                elif kind == 0x54:          # T
                    tid = pickle.loads(view[first:start])[1][0]
                    transactions += 1
                elif kind == 0x43:          # C
                    self.frames, self.transactions = frames, transactions
                    self.bytes = total + start
                    yield tid, received_at
                elif kind == 0x42:          # B
                    raw = 1 + pickle.loads(view[first:start])[1][4]
            # Need more bytes: compact, grow if a frame is larger.
            if start:
                total += start
                view[:end - start] = view[start:end]
                end -= start
                start = 0
            if need > len(buf):
                grown = bytearray(max(need, 2 * len(buf)))
                grown[:end] = buf[:end]
                buf, view = grown, memoryview(grown)
            if stop is not None and stop():
                return
            try:
                received = self.sock.recv_into(view[end:])
            except socket.timeout:
                if stop is None:
                    raise
                continue
            if not received:
                return
            received_at = time.monotonic()
            end += received


def stream_probe(conn, port, start_tid):
    """--lag-probe, in a worker: follow a primary's stream; sends {tid:
    time its C message arrived} after ('stop',)."""
    sock = connect(port, start_tid, 30)
    sock.settimeout(0.1)
    conn.send('ready')
    arrived = dict(StreamReader(sock).commits(stop=conn.poll))
    conn.recv()
    sock.close()
    conn.send(arrived)
