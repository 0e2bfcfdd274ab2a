"""The primary side: read committed transactions and stream them.

`CommittedFile` reads a FileStorage's committed transactions through its own
file handle, with few system calls (`os.pread` of 1 MiB windows), never past
the committed end (read under the storage lock, see `zrsd.internals`), and
reopens the file when a pack replaced it.

`TidIndex` finds where to start for a secondary's tid without scanning the
whole file each time: recent tids by a short backward walk from the end,
others through a sparse tid -> position index built once by walking
transaction headers.

`Streamer` is one secondary's reader: a thread that turns transactions into
ZRS frames (see `zrsd.protocol`), hands them to the connection in batches,
waits while the connection is paused (back-pressure), and, once caught up,
sleeps until the storage's `CommitNotifier` says something was committed.

Threads: each `Streamer` runs in its own thread; `pause`, `resume` and
`stop` are called from the reactor thread; `send` (given by the network
side) must be safe to call from the streamer thread.
"""
import bisect
import logging
import os
import struct
import threading

from ZODB.BaseStorage import TransactionRecord
from ZODB.blob import is_blob_record
from ZODB.FileStorage.format import (DATA_HDR, DATA_HDR_LEN, TRANS_HDR,
                                     TRANS_HDR_LEN)
from ZODB.POSException import POSKeyError
from ZODB.utils import u64, z64

from . import internals, protocol

logger = logging.getLogger(__name__)

WINDOW = 1 << 20            # bytes read per system call when walking
BATCH = 256 << 10           # bytes handed to the connection at once
BACKWARD_LIMIT = 2000       # transactions walked back from the end
CHECKPOINT_EVERY = 1000     # transactions between TidIndex entries

_TRANS = struct.Struct(TRANS_HDR)
_DATA = struct.Struct(DATA_HDR)


class HistoryMismatch(Exception):
    """The secondary's start tid is not in this primary's history: the two
    histories forked (a failover, a restore) or belong to different
    databases.  Its text names the tid and this file's neighbouring
    transactions."""


class CorruptFile(Exception):
    """The primary's own file does not parse."""


class PackedUnderfoot(Exception):
    """A pack replaced the file (and removed blob files) in the middle of
    a transaction being sent; the connection must be dropped, so that the
    secondary discards it and resumes from the packed file."""


class TxnHeader:
    __slots__ = ('pos', 'tid', 'tlen', 'status', 'ulen', 'dlen', 'elen')

    def __init__(self, pos, raw):
        self.pos = pos
        (self.tid, self.tlen, status, self.ulen, self.dlen,
         self.elen) = _TRANS.unpack(raw)
        self.status = status.decode('latin-1')

    @property
    def header_length(self):
        return TRANS_HDR_LEN + self.ulen + self.dlen + self.elen

    @property
    def end(self):
        """Position after this transaction (and its redundant length)."""
        return self.pos + self.tlen + 8


class CommittedFile:
    """Committed transactions of a FileStorage, read through our own handle.

    Used by one thread at a time.
    """

    def __init__(self, fs):
        self.fs = fs
        self.name = internals.file_name(fs)
        self._fd = None
        self._source = None
        self._window_pos = 0
        self._window = b''
        self.end = 4
        self.reopen()

    def reopen(self):
        self.close()
        with internals.storage_lock(self.fs):
            self._source = internals.current_file(self.fs)
            self._fd = os.open(self.name, os.O_RDONLY)
        self._window_pos, self._window = 0, b''

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def replaced(self):
        """Has a pack replaced the storage's file since we opened it?"""
        return internals.current_file(self.fs) is not self._source

    def committed_end(self):
        """Return (end, reopened): the committed end; True after a pack.

        When the storage switched to a new file (pack), this reopens it
        and the caller must find its position again.
        """
        source, self.end = internals.committed_file(self.fs)
        if source is not self._source:
            self.reopen()
            _, self.end = internals.committed_file(self.fs)
            return self.end, True
        return self.end, False

    def read(self, pos, size):
        """`size` bytes at `pos`, through the read window when small."""
        start = pos - self._window_pos
        if 0 <= start and start + size <= len(self._window):
            return self._window[start:start + size]
        if size >= WINDOW or pos + size > self.end:
            return self._pread(pos, size)
        # Never cache bytes past the committed end: the transaction being
        # committed there is still changing (its status byte, for one).
        self._window_pos = pos
        self._window = os.pread(self._fd, min(WINDOW, self.end - pos), pos)
        return self._window[:size]

    def _pread(self, pos, size):
        data = os.pread(self._fd, size, pos)
        if len(data) != size:
            raise CorruptFile('%s: short read of %d bytes at %d' % (
                self.name, size, pos))
        return data

    def header(self, pos):
        """The transaction header at `pos`."""
        return TxnHeader(pos, self.read(pos, TRANS_HDR_LEN))

    def header_before(self, pos):
        """The header of the transaction that ends at `pos`."""
        tlen = u64(self.read(pos - 8, 8))
        return self.header(pos - 8 - tlen)

    def data_header(self, pos):
        return _DATA.unpack(self.read(pos, DATA_HDR_LEN))

    def back_data(self, back):
        """Follow a back pointer: (data or None, tid of the record at back).

        Reads around the window, so that a back pointer does not throw away
        the sequential read-ahead.
        """
        oid, tid, _, _, vlen, plen = _DATA.unpack(
            self._pread(back, DATA_HDR_LEN))
        data_txn = tid
        while not plen:
            (pointer,) = struct.unpack('>Q', self._pread(
                back + DATA_HDR_LEN + vlen, 8))
            if not pointer:
                return None, data_txn
            back = pointer
            oid, tid, _, _, vlen, plen = _DATA.unpack(
                self._pread(back, DATA_HDR_LEN))
        return self._pread(back + DATA_HDR_LEN + vlen, plen), data_txn

    def transaction(self, pos, end):
        """(header, metadata, records) of the committed transaction at pos.

        `records` is a generator of (oid, tid, data, data_txn).
        """
        header = self.header(pos)
        if header.end > end or header.status == 'c':
            raise CorruptFile('%s: transaction at %d runs past the committed '
                              'end %d' % (self.name, pos, end))
        if header.tlen < header.header_length:
            raise CorruptFile('%s: bad transaction header at %d' % (
                self.name, pos))
        at = pos + TRANS_HDR_LEN
        user = self.read(at, header.ulen)
        description = self.read(at + header.ulen, header.dlen)
        extension = self.read(at + header.ulen + header.dlen, header.elen)
        meta = TransactionRecord(header.tid, header.status, user,
                                 description, extension)
        return header, meta, self._records(header)

    def _records(self, header):
        pos = header.pos + header.header_length
        tend = header.pos + header.tlen
        while pos < tend:
            oid, tid, _, tloc, vlen, plen = self.data_header(pos)
            if tloc != header.pos or vlen:
                raise CorruptFile('%s: bad data record at %d' % (
                    self.name, pos))
            body = pos + DATA_HDR_LEN
            if plen:
                data, data_txn = self.read(body, plen), None
                pos = body + plen
            else:
                (back,) = struct.unpack('>Q', self.read(body, 8))
                data, data_txn = (None, None) if not back else \
                    self.back_data(back)
                pos = body + 8
            yield oid, tid, data, data_txn


class TidIndex:
    """Where does the first transaction after a given tid start?

    One per storage file, shared by its streamers (thread-safe).  Sparse:
    one entry per CHECKPOINT_EVERY transactions, extended as needed.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._source = None
        self._tids = []
        self._positions = []
        self._count = 0           # transactions walked so far
        self._walked_to = 4       # position after the last walked one

    def find_after(self, reader, tid, end):
        """Position of the first transaction with a tid above `tid`
        (`end` when there is none)."""
        if end <= 4 or tid == z64:
            return 4
        last = reader.header_before(end)
        if last.tid <= tid:
            return end
        # Recent tids: walk back from the end.
        header = last
        for _ in range(BACKWARD_LIMIT):
            if header.pos <= 4:
                return 4
            previous = reader.header_before(header.pos)
            if previous.tid <= tid:
                return header.pos
            header = previous
        return self._find_forward(reader, tid, header.pos)

    def start_position(self, reader, tid, end):
        """Where to start streaming for a secondary whose last tid is `tid`:
        the history guard.

        Returns (position, note): `note` is None when `tid` is zero or a
        transaction of this file, or says why an absent `tid` is accepted:
        it lies in the packed part of the file (FileStorage's pack rewrites
        the transactions before the pack time with status 'p' and drops
        those left empty, so a tid there may have been packed away).  Any
        other tid raises HistoryMismatch.
        """
        pos = self.find_after(reader, tid, end)
        if tid == z64:
            return pos, None
        before = reader.header_before(pos) if pos > 4 else None
        if before is not None and before.tid == tid:
            return pos, None
        after = reader.header(pos) if pos < end else None
        packed = (before.status == 'p' if before is not None
                  else after is not None and after.status == 'p')
        neighbours = describe_neighbours(before, after)
        if packed:
            return pos, ('%s is not in this storage, but lies in its packed '
                         'part (%s), where a pack may have removed it' % (
                             tid.hex(), neighbours))
        raise HistoryMismatch(
            'its last transaction %s is not in this storage (%s)' % (
                tid.hex(), neighbours))

    def _find_forward(self, reader, tid, limit):
        with self._lock:
            if self._source is not reader._source:
                self._source = reader._source
                self._tids, self._positions = [], []
                self._count, self._walked_to = 0, 4
            pos = self._walked_to
            while pos < limit:
                header = reader.header(pos)
                if self._count % CHECKPOINT_EVERY == 0:
                    self._tids.append(header.tid)
                    self._positions.append(pos)
                self._count += 1
                pos = header.end
            self._walked_to = max(self._walked_to, pos)
            i = bisect.bisect_right(self._tids, tid) - 1
            pos = self._positions[i] if i >= 0 else 4
        while True:
            header = reader.header(pos)
            if header.tid > tid:
                return pos
            pos = header.end


def describe_neighbours(before, after):
    """The transactions around a missing tid, for log lines."""
    parts = []
    if before is None:
        parts.append('nothing before it')
    else:
        parts.append('the transaction before it is %s' % before.tid.hex())
    if after is None:
        parts.append('nothing after it' if before is None else
                     'that is the last transaction here')
    else:
        parts.append('the one after it %s' % after.tid.hex())
    return ', '.join(parts)


class Streamer:
    """Stream one secondary's transactions after `start_tid` (own thread).

    `send(chunks)` delivers a list of bytes to the connection (thread-safe);
    `done(error)` is called once at the end, with None or an exception.
    """

    def __init__(self, fs, notifier, tid_index, start_tid, send, done,
                 name, blobs=False):
        self.fs = fs
        self.notifier = notifier
        self.tid_index = tid_index
        self.last_tid = start_tid
        self._send = send
        self._done = done
        self.name = name
        self.blobs = blobs
        self.checksum = protocol.StreamChecksum(start_tid)
        self.transactions = 0
        self.bytes = 0
        self._batch = []
        self._batch_size = 0
        self._stopped = False
        self._finishing = False   # stop once everything committed is sent
        self._running = threading.Event()   # cleared while paused
        self._running.set()
        self._thread = threading.Thread(
            target=self._run, name='zrsd-streamer %s' % name, daemon=True)

    def start(self):
        self._thread.start()

    # -- called from the reactor thread ---------------------------------

    def pause(self):
        self._running.clear()

    def resume(self):
        self._running.set()

    def finish(self):
        """Send what is committed, then end (a stopping primary, whose
        commits have stopped, lets its secondaries catch up)."""
        self._finishing = True
        self.notifier.wake()

    def stop(self):
        self._stopped = True
        self._running.set()
        self.notifier.wake()

    def join(self, timeout=None):
        self._thread.join(timeout)

    # -- the streamer thread ----------------------------------------------

    def _run(self):
        reader = CommittedFile(self.fs)
        error = None
        try:
            self._stream(reader)
        except Exception as exc:
            error = exc
        finally:
            reader.close()
        self._done(error)

    def _stream(self, reader):
        end, _ = reader.committed_end()
        pos, note = self.tid_index.start_position(reader, self.last_tid, end)
        if note is not None:
            logger.warning('%s: %s; streaming from the next transaction',
                           self.name, note)
        logger.info('%s: streaming transactions after %s (%s)', self.name,
                    self.last_tid.hex(),
                    'zrs2.1' if self.blobs else 'zrs2.0')
        while not self._stopped:
            generation = self.notifier.generation
            end, reopened = reader.committed_end()
            if reopened:
                logger.info('%s: storage file replaced (pack); resuming '
                            'after %s', self.name, self.last_tid.hex())
                # If the pack dropped the (emptied) transactions up to the
                # one last sent, this is the end: wait for the next commit.
                pos = self.tid_index.find_after(reader, self.last_tid, end)
            if pos < end:
                # Stop at a pack: what the old file holds may refer to blob
                # files the pack removed.
                while (pos < end and not self._stopped
                       and not reader.replaced()):
                    pos = self._send_transaction(reader, pos, end)
                self._flush()
            elif self._finishing:
                return
            else:
                self.notifier.wait(generation, lambda: self._stopped
                                   or self._finishing)

    def _send_transaction(self, reader, pos, end):
        header, meta, records = reader.transaction(pos, end)
        if header.status == 'u':  # undone by an old-style undo: skip
            return header.end
        self._message('T', (meta.tid, meta.status, meta.user,
                            meta.description, meta.extension))
        # ZEO stores a blob record twice in one transaction (store, then
        # storeBlobEnd); both name the same blob file, so send it once.
        blobs_sent = set()
        for oid, tid, data, data_txn in records:
            if (self.blobs and data and oid not in blobs_sent
                    and is_blob_record(data)):
                if self._send_blob(reader, oid, tid, data, data_txn):
                    blobs_sent.add(oid)
                    continue
            self._message('S', (oid, tid, '', data_txn))
            self._payload(data or b'')
        self._message('C', (self.checksum.digest(),))
        self.last_tid = header.tid
        self.transactions += 1
        return header.end

    def _send_blob(self, reader, oid, tid, data, data_txn):
        try:
            blob = open(self.fs.loadBlob(oid, tid), 'rb')
        except (OSError, POSKeyError):
            if reader.replaced():
                raise PackedUnderfoot(
                    'a pack removed the blob file of %s at %s while %s was '
                    'being sent' % (oid.hex(), tid.hex(), tid.hex()))
            logger.warning('%s: blob file of %s at %s is missing; sending '
                           'the record without it', self.name, oid.hex(),
                           tid.hex())
            return False
        with blob:
            size = os.fstat(blob.fileno()).st_size
            blocks = -(-size // protocol.BLOB_BLOCK_SIZE)
            self._message('B', (oid, tid, '', data_txn, blocks))
            self._payload(data)
            for _ in range(blocks):
                block = blob.read(protocol.BLOB_BLOCK_SIZE)
                if not block:
                    raise CorruptFile('blob file of %s at %s shrank' % (
                        oid.hex(), tid.hex()))
                self._payload(block)
        return True

    def _message(self, kind, data):
        self._payload(protocol.encode_message(kind, data))

    def _payload(self, payload):
        self.checksum.update(payload)
        self._batch.append(protocol.frame_length(payload))
        self._batch.append(payload)
        self._batch_size += len(payload) + 4
        self.bytes += len(payload) + 4
        if self._batch_size >= BATCH:
            self._flush()

    def _flush(self):
        if self._batch:
            batch, self._batch, self._batch_size = self._batch, [], 0
            # Back-pressure: wait while the connection is paused.
            self._running.wait()
            if not self._stopped:
                self._send(batch)
