"""The primary's history: its committed file, where a secondary starts,
and the history guard.

`CommittedFile` reads a FileStorage's committed transactions through its own
file handle, with few system calls (`os.pread` of 1 MiB windows), never past
the committed end (read under the storage lock, see `zrsd.internals`), and
reopens the file when a pack replaced it.

`TidIndex` finds where to start for a secondary's tid without scanning the
whole file each time: recent tids by a short backward walk from the end,
others through a sparse tid -> position index built once by walking
transaction headers.  `TidIndex.start_position` is the history guard: a
secondary starts from zero or from a tid of this file (or of its packed
part); any other tid is a forked or foreign history (`HistoryMismatch`).

Both are used from the streamer threads (`zrsd.primary.streamer`); a
`TidIndex` is shared by a storage's streamers (thread-safe).
"""
import bisect
import collections
import logging
import mmap
import os
import struct
import threading

from ZODB.FileStorage.format import (DATA_HDR, DATA_HDR_LEN, TRANS_HDR,
                                     TRANS_HDR_LEN)
from ZODB.utils import u64, z64

from zrsd import internals

logger = logging.getLogger(__name__)

WINDOW = 1 << 20            # bytes read per system call when walking
BACKWARD_LIMIT = 2000       # transactions walked back from the end
CHECKPOINT_EVERY = 1000     # transactions between TidIndex entries
SLICE = 1 << 20             # a bigger record is read and sent in slices

_TRANS = struct.Struct(TRANS_HDR)
_DATA = struct.Struct(DATA_HDR)


def recent_invalidations(path, end, count):
    """What FileStorage's `lastInvalidations(count)` returns, for the file
    at `path` committed up to `end`: [(tid, [oid, ...])] of the last `count`
    transactions (undone ones left out), oldest first.  It reads only the
    headers, where FileStorage reads every record's data: ZEO asks for it
    when it starts serving, with `invalidation-queue-size` transactions.
    """
    if end <= 4 or count <= 0:
        return []
    with open(path, 'rb') as f, \
            mmap.mmap(f.fileno(), end, access=mmap.ACCESS_READ) as view:
        starts, pos = [], end
        while len(starts) < count and pos > 4:
            pos -= 8 + u64(view[pos - 8:pos])
            starts.append(pos)
        recent = []
        for pos in reversed(starts):
            header = TxnHeader(pos, view[pos:pos + TRANS_HDR_LEN])
            if header.status == 'u':
                continue
            oids, at = [], pos + header.header_length
            while at < pos + header.tlen:
                oid, _, _, _, vlen, plen = _DATA.unpack_from(view, at)
                oids.append(oid)
                at += DATA_HDR_LEN + (vlen + 16 if vlen else 0) + (
                    plen or 8)
            recent.append((header.tid, oids))
        return recent


class HistoryMismatch(Exception):
    """The secondary's start tid is not in this primary's history: the two
    histories forked (a failover, a restore) or belong to different
    databases.  Its text names the tid and this file's neighbouring
    transactions."""


class CorruptFile(Exception):
    """The primary's own file does not parse."""


# A transaction's metadata as the file holds it: the extension stays the
# pickle bytes it is (never unpickled on the primary).
TransactionMeta = collections.namedtuple(
    'TransactionMeta', 'tid status user description extension_bytes')


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

    def __init__(self, fs, committed=None):
        self.fs = fs
        # () -> (file, end) of what may be sent: the storage's published
        # transactions (a replica publishes after its fsync).
        self._committed = committed or (
            lambda: internals.committed_file(fs))
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
        source, self.end = self._committed()
        if source is not self._source:
            self.reopen()
            _, self.end = self._committed()
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

    def data(self, pos, size, read=None):
        """The record data at `pos`: bytes, or `LargeData` (read when
        sent) above SLICE bytes.  `read`: how to read small data (default
        through the window)."""
        if size > SLICE:
            return LargeData(self, pos, size)
        return (read or self.read)(pos, size)

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
        return self.data(back + DATA_HDR_LEN + vlen, plen,
                         self._pread), data_txn

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
        meta = TransactionMeta(header.tid, header.status, user,
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
                data, data_txn = self.data(body, plen), None
                pos = body + plen
            else:
                (back,) = struct.unpack('>Q', self.read(body, 8))
                data, data_txn = (None, None) if not back else \
                    self.back_data(back)
                pos = body + 8
            yield oid, tid, data, data_txn


class LargeData:
    """The data of a record bigger than SLICE: its length, and its bytes
    read slice by slice as they are sent (a secondary that reads slowly
    then holds the primary to about one slice, not to the record)."""

    def __init__(self, reader, pos, size):
        self._reader, self._pos, self._size = reader, pos, size

    def __len__(self):
        return self._size

    def slices(self):
        for offset in range(0, self._size, SLICE):
            yield self._reader._pread(self._pos + offset,
                                      min(SLICE, self._size - offset))


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
