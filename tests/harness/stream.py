"""`Stream`, the one builder of what a ZRS primary sends (for the tests
and the fuzzer), `replicate`, which applies it in process, `RecordingSink`,
which records what a receiver makes of it, `FakePrimary`, which serves
scripted streams on 127.0.0.1, `RawSecondary`, a raw connection to a zrsd
primary, and the socket readers (`Reader`, `read_frames`,
`read_until_closed`).

Script items are `bytes` (sent framed), `Raw` (sent as-is) or `CLOSE`.
"""
import collections
import contextlib
import dataclasses
import hashlib
import itertools
import pickle
import select
import socket
import socketserver
import struct
import tempfile
import threading
import time

from ZODB.utils import z64

from zrsd.protocol import BLOB_BLOCK_SIZE, FrameDecoder
from zrsd.replica.receiver import Receiver

from .process import LogTail, wait_until


def frame(payload):
    """One wire frame: 4-byte big-endian length, then the payload."""
    return struct.pack('>I', len(payload)) + payload


def message(kind, data):
    """One message payload, pickled as a zc.zrs primary does."""
    return pickle.dumps((kind, data), 1)


class Raw(bytes):
    """Bytes written to the socket verbatim (no length prefix)."""


CLOSE = object()  # script item: close the connection right there


class Stream:
    """The frames a primary sends on a connection from `start_tid`.
    `frames`: `(kind, payload)`; kind is a message type ('T', 'C'...),
    'data', 'block', 'raw' (unframed, not checksummed) or 'close'.
    `commit()` sends the md5 of the framed payloads; `starts`, `size`:
    wire offsets.  A `legacy` stream stores inline, commits no digest.
    """

    def __init__(self, start_tid=z64, legacy=False):
        self.start_tid, self.legacy = start_tid, legacy
        self.md5 = hashlib.md5(start_tid)
        self.frames, self.starts = [], []   # (kind, payload), wire offset
        self.size = self._taken = 0

    def payload(self, data, kind='data'):
        data = bytes(data)
        self.md5.update(data)
        return self._append(kind, data, 4 + len(data))

    def message(self, kind, data):
        return self.payload(message(kind, data), kind)

    def raw(self, data):
        return self._append('raw', bytes(data), len(data))

    def close(self):
        return self._append('close', b'', 0)

    def _append(self, kind, data, length):
        self.frames.append((kind, data))
        self.starts.append(self.size)
        self.size += length
        return self

    def begin(self, tid, status=' ', user=b'', description=b'',
              extension=None):
        return self.message(
            'T', (tid, status, user, description, extension or {}))

    def store(self, oid, tid, data, data_txn=None):
        """Current form: 'S' message, then the record data in a frame."""
        self.message('S', (oid, tid, '', data_txn))
        return self.payload(data or b'')

    def store_legacy(self, oid, tid, data, data_txn=None):
        """Old form: data inline in the 'S' message, no data frame."""
        return self.message('S', (oid, tid, '', data, data_txn))

    def store_blob(self, oid, tid, data, blocks, data_txn=None):
        """'B' message, the record data, then the blob's content blocks."""
        self.message('B', (oid, tid, '', data_txn, len(blocks)))
        self.payload(data)
        for block in blocks:
            self.payload(block, 'block')
        return self

    def commit(self, digest=None):
        """'C' with the running digest (or the given, possibly wrong, one);
        a legacy stream's 'C' has no digest."""
        if self.legacy:
            return self.commit_legacy()
        return self.message(
            'C', (self.md5.digest() if digest is None else digest,))

    def commit_legacy(self):
        return self.message('C', ())

    def begin_txn(self, txn, tid=None):
        """'T' for `txn` (with `tid` instead of its own)."""
        return self.begin(txn.tid if tid is None else tid, txn.status,
                          txn.user, txn.description, dict(txn.extension))

    def records(self, txn, count=None, tid=None):
        """Store the first `count` records of `txn` (all: None), each with
        `tid` (default: the transaction's).  A record with a `blob`
        attribute that is not None is sent as a blob record."""
        tid = txn.tid if tid is None else tid
        records = txn.records if hasattr(txn, 'records') else list(txn)
        for r in records[:count]:
            blob = getattr(r, 'blob', None)
            if self.legacy:
                self.store_legacy(r.oid, tid, r.data, r.data_txn)
            elif blob is None:
                self.store(r.oid, tid, r.data, r.data_txn)
            else:
                self.store_blob(r.oid, tid, r.data, blob_blocks(blob),
                                r.data_txn)
        return self

    def transaction(self, txn, tid=None, digest=None):
        """A whole `history.Txn` or `fs.iterator()` item; `tid` and
        `digest` override its tid and the checksum."""
        tid = txn.tid if tid is None else tid
        return self.begin_txn(txn, tid).records(txn, tid=tid).commit(digest)

    def one(self, tid, oid=z64, data=b'record', digest=None, **meta):
        """A whole transaction storing one record; `meta`: begin()'s."""
        self.begin(tid, **meta).store(oid, tid, data)
        return self.commit(digest)

    @property
    def payloads(self):
        """The framed payloads, in order."""
        return _framed(self.frames)

    @property
    def commits(self):
        """The (start, end) wire offsets of each 'C' frame."""
        return [(start, start + 4 + len(p))
                for start, (kind, p) in zip(self.starts, self.frames)
                if kind == 'C']

    def wire(self):
        """The bytes on the wire (up to a 'close')."""
        return wire(self.frames)

    def take(self):
        """The wire bytes added since the last take()."""
        taken, self._taken = self._taken, len(self.frames)
        return wire(self.frames[taken:])

    def take_payloads(self):
        """The framed payloads added since the last take_payloads()."""
        taken, self._taken = self._taken, len(self.frames)
        return _framed(self.frames[taken:])

    def script(self):
        """The items `FakePrimary` sends: bytes, `Raw`, `CLOSE`."""
        return [CLOSE if kind == 'close' else Raw(p) if kind == 'raw' else p
                for kind, p in self.frames]


def _framed(frames):
    return [p for kind, p in frames if kind not in ('raw', 'close')]


def wire(frames):
    """The bytes on the wire for `(kind, payload)` frames (see `Stream`)."""
    frames = itertools.takewhile(lambda f: f[0] != 'close', frames)
    return b''.join(p if kind == 'raw' else frame(p) for kind, p in frames)


def blob_blocks(content):
    """A blob's content in the blocks a primary sends."""
    return [content[p:p + BLOB_BLOCK_SIZE]
            for p in range(0, len(content), BLOB_BLOCK_SIZE)]


def split_everywhere(data, pieces=2):
    """Every way of cutting `data` into `pieces` consecutive (possibly
    empty) parts, each as a list of the parts."""
    for cuts in itertools.combinations_with_replacement(
            range(len(data) + 1), pieces - 1):
        bounds = (0,) + cuts + (len(data),)
        yield [data[a:b] for a, b in zip(bounds, bounds[1:])]


def bytewise(data):
    """`data` one byte at a time."""
    return [data[i:i + 1] for i in range(len(data))]


def replay(txns, legacy=False, tail=None):
    """A script like a real primary's: callable(start_tid) -> the items
    of every transaction of `txns` after `start_tid`, then `tail(stream)`'s.
    """
    def script(start_tid):
        stream = Stream(start_tid, legacy)
        for txn in txns:
            if txn.tid > start_tid:
                stream.transaction(txn)
        if tail is not None:
            tail(stream)
        return stream.script()
    return script


def replicate(writer, txns):
    """Apply `txns` to a replica's `writer` as a primary sends them on a
    new connection."""
    start = writer.last_applied()
    stream, receiver = Stream(start), Receiver(writer, start)
    for txn in txns:
        stream.transaction(txn)
    for payload in stream.payloads:
        receiver.frame_received(payload)


class RecordingSink:
    """A receiver's sink recording its calls as (name, arguments...)
    tuples; the call `fail_on` raises OSError('disk full').  Blob files
    are temporary files in `blob_dir`."""

    def __init__(self, blob_dir=None, fail_on=None):
        self.blob_dir, self.fail_on = blob_dir, fail_on
        self.calls, self.committed, self.blobs = [], [], []
        self.tid = None

    def _record(self, *call):
        self.calls.append(call)
        if call[0] == self.fail_on:
            raise OSError('disk full')

    def begin(self, tid, status, user, description, extension):
        self.tid = tid
        self._record('begin', tid, status, user, description, extension)

    def store(self, oid, tid, data, data_txn):
        self._record('store', oid, tid, data, data_txn)

    def open_blob(self):
        self._record('open_blob')
        return tempfile.NamedTemporaryFile(
            dir=self.blob_dir, suffix='.blob', delete=False)

    def store_blob(self, oid, tid, data, data_txn, blob_file):
        with open(blob_file.name, 'rb') as f:
            content = f.read()
        self.blobs.append(blob_file)
        self._record('store_blob', oid, tid, data, data_txn, content,
                     blob_file.closed)

    def commit(self):
        self._record('commit', self.tid)
        self.committed.append(self.tid)
        self.tid = None
        return self.committed[-1]

    def abort(self):
        self._record('abort', self.tid)
        self.tid = None

    def names(self):
        return [call[0] for call in self.calls]


@dataclasses.dataclass
class Connection:
    """What the fake primary saw on one accepted connection."""

    index: int
    protocol: bytes = None
    start_tid: bytes = None


class FakePrimary(socketserver.ThreadingTCPServer):
    """A ZRS primary on 127.0.0.1 sending each connection its `script`
    (item i of a list, or a callable(start_tid)), then reading keep-alives
    until the secondary closes or the `with` ends.
    """

    daemon_threads = True
    handshake_timeout = 30.0

    def __init__(self, script=()):
        super().__init__(('127.0.0.1', 0), None)
        self.script, self.connections = script, []
        self.port = self.server_address[1]
        self._stop = threading.Event()

    def __enter__(self):
        threading.Thread(target=self.serve_forever, args=(0.1,), daemon=True,
                         name='fake-primary-%s' % self.port).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.shutdown()
        self.server_close()

    def wait_connections(self, n, timeout=60.0):
        """Wait until `n` connections completed their handshake; those."""
        def done():
            shaken = [c for c in list(self.connections) if c.start_tid]
            return [shaken] if len(shaken) >= n else None
        return wait_until(done, timeout, 0.02,
                          'fake primary: %d handshakes' % n)[0]

    @property
    def start_tids(self):
        return [c.start_tid for c in list(self.connections) if c.start_tid]

    def process_request(self, sock, address):
        # Numbered here, in the order accepted, then served in a thread
        # (`finish_request`) with its `Connection` for an address.
        self.connections.append(Connection(len(self.connections)))
        super().process_request(sock, self.connections[-1])

    def finish_request(self, sock, conn):
        script, reader = self.script, Reader(sock, self._stop)
        protocol = reader.frame(self.handshake_timeout)
        tid = reader.frame(self.handshake_timeout)
        if protocol is None or tid is None:
            return
        conn.protocol, conn.start_tid = protocol, tid
        with contextlib.suppress(OSError):  # the secondary went away
            for item in (script(tid) if callable(script) else
                         script[conn.index] if conn.index < len(script)
                         else []):
                if item is CLOSE:
                    return
                sock.sendall(item if isinstance(item, Raw) else frame(item))
            reader.drain()  # keep-alives, until the secondary closes


class Reader:
    """Reads frames from a socket, giving up on EOF, an error, `stop` (an
    Event) or a timeout."""

    def __init__(self, sock, stop=None):
        self.sock, self.stop, self.ready = sock, stop, collections.deque()
        self.decoder = FrameDecoder(self.ready.append, 1 << 32)  # no limit

    def frame(self, timeout=None):
        """The next frame's payload, or None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready:
            wait = 0.1 if deadline is None else min(
                0.1, deadline - time.monotonic())
            if self.stop is not None and self.stop.is_set() or wait <= 0:
                return None
            try:
                if select.select([self.sock], [], [], wait)[0]:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        return None
                    self.decoder.feed(chunk)
            except OSError:
                return None
        return self.ready.popleft()

    def frames(self, count, timeout):
        """Up to `count` frames within `timeout` seconds (fewer: None)."""
        deadline, frames = time.monotonic() + timeout, []
        while len(frames) < count and (payload := self.frame(
                deadline - time.monotonic())) is not None:
            frames.append(payload)
        return frames

    def drain(self):
        """Read frames until EOF, an error or `stop`."""
        while self.frame() is not None:
            pass


def read_frames(sock, count, timeout):
    """Up to `count` frames from `sock`: fewer at EOF, on an error or
    after `timeout` seconds."""
    return Reader(sock).frames(count, timeout)


def read_until_closed(sock):
    """Read and discard until the peer closes: ('eof', or 'reset' on an
    error, the bytes read); a socket timeout raises TimeoutError."""
    received = 0
    try:
        while data := sock.recv(1 << 16):
            received += len(data)
    except TimeoutError:
        raise
    except OSError:
        return 'reset', received
    return 'eof', received


class RawSecondary(socket.socket):
    """A raw socket to a zrsd `primary`'s replication port, sent `data`,
    and what the primary logged about its client `port` since it
    connected (`records()`, read by `log`, a `LogTail` of the primary's
    log, shared or its own)."""

    def __init__(self, primary, data=b'', timeout=30.0, log=None,
                 rcvbuf=None):
        super().__init__()
        self.log = log or LogTail(primary.log_path)
        self.log.poll()
        if rcvbuf is not None:   # before connect: a small window
            self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.settimeout(timeout)
        # A primary that refuses at once may reset before connect returns.
        self.reset_at_connect = False
        try:
            self.connect(('127.0.0.1', primary.repl_port))
        except ConnectionResetError:
            self.reset_at_connect = True
        self.port = self.getsockname()[1]
        self.first = len(self.log.ports[self.port])
        self.received = 0   # bytes read (and discarded) by wait_closed
        self.try_send(data)

    def try_send(self, data):
        """Send `data` unless the primary closed the connection."""
        with contextlib.suppress(OSError):
            self.sendall(data)

    def records(self):
        self.log.poll()
        return self.log.ports[self.port][self.first:]

    def wait_closed(self):
        """Read and discard until the primary closes: 'eof' or 'reset'
        (TimeoutError after `timeout` seconds of silence)."""
        if self.reset_at_connect:
            return 'reset'
        ended, self.received = read_until_closed(self)
        return ended

    def close(self, reset=False):
        """Close (`reset`: with a RST)."""
        if reset:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                struct.pack('ii', 1, 0))
        super().close()
