"""A primary's ZRS stream read off a socket (catch-up row (e), --lag-probe)
in zrsd/protocol.py's format: 4-byte sized frames, pickled messages; raw
data frames follow an S (record) or B (blob) message."""
import pickle
import socket
import struct
import time

from ZODB.utils import z64


def connect(port, timeout, start_tid):
    """A TCP connection to a primary's ZRS port on 127.0.0.1, handshake
    sent: the protocol name, then the tid after which it wants data."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(struct.pack('>I', 6) + b'zrs2.0' + struct.pack('>I', 8) +
                 start_tid)
    return sock


def bare_stream(port, last_tid, timeout):
    """Consume a ZRS primary's stream from the start, up to the C message
    after the T of `last_tid`, and discard it.  Only T and B messages are
    unpickled; the message type is the 7th byte of the protocol-1 pickle
    `(X\\x01\\0\\0\\0T...`."""
    cpu = time.process_time()
    started = time.monotonic()
    sock = connect(port, timeout, z64)
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    start = end = 0
    raw = frames = transactions = total = 0     # raw: data frames due
    tid = None
    prefix = b'(X\x01\x00\x00\x00'
    unpack = struct.unpack_from
    try:
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
                    if tid == last_tid:
                        done = time.monotonic()
                        return dict(
                            seconds=done - started, verified=True,
                            transactions=transactions, frames=frames,
                            stream_bytes=total + start,
                            replica_cpu=time.process_time() - cpu)
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
            received = sock.recv_into(view[end:])
            if not received:
                raise RuntimeError('the primary closed the stream after '
                                   '%d transactions' % transactions)
            end += received
    finally:
        sock.close()


def stream_probe(conn, port, start_tid):
    """Diagnostic (--lag-probe): follow a primary's stream from `start_tid`
    like a secondary that applies nothing, and note when each transaction's
    C message arrived.  Sends {tid: time} after ('stop',)."""
    sock = connect(port, 30, start_tid)
    sock.settimeout(0.1)
    buf, raw, tid, arrived = b'', 0, None, {}
    conn.send('ready')
    while not conn.poll():
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        now = time.monotonic()
        if not data:
            break
        buf += data
        while len(buf) >= 4:
            (size,) = struct.unpack_from('>I', buf)
            if len(buf) < 4 + size:
                break
            payload, buf = buf[4:4 + size], buf[4 + size:]
            if raw:
                raw -= 1
                continue
            message = pickle.loads(payload)
            if message[0] == 'S':
                raw = 1
            elif message[0] == 'B':
                raw = 1 + message[1][4]
            elif message[0] == 'T':
                tid = message[1][0]
            elif message[0] == 'C':
                arrived[tid] = now
    conn.recv()
    sock.close()
    conn.send(arrived)
