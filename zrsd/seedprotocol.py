"""The zrsd-seed1 protocol: a replica copies its primary's file.

A zrsd extension beside ZRS, on the same port and with the same framing
(`zrsd.protocol`: 4-byte big-endian length, payload).  A new or far-behind
zrsd replica uses it before it opens its storage; it then replicates with
ZRS as always.  A zc.zrs primary does not know the protocol name and closes
the connection: the replica then simply replicates with ZRS.

Handshake, secondary to primary:

- the protocol name, ``zrsd-seed1``;
- ``Q`` + length (8 bytes, big-endian) + last tid (8 bytes): the replica's
  file is that long and ends with that transaction (length 0: no file;
  4: the file header only, tid zero).

Primary to secondary: ``I`` + the primary's committed length (8 bytes) +
flags (1 byte: 1 = the storage has blobs).  The secondary then either
closes (too little to copy: ZRS is cheaper than proving its prefix), or
sends ``P`` + the sha256 of its first `length` bytes.  The primary
compares that with the sha256 of its own first `length` bytes (hashed
from the ``Q`` on, while the secondary hashes, on the file it then copies
from: a pack in between refuses the copy), which must end at a
transaction boundary with the same tid.  If anything differs, it answers
``N`` + a reason (UTF-8) and closes; the replica replicates with ZRS
(whose history guard then decides).  Otherwise it sends, for each
committed transaction after `length` up to its committed end at that
moment, in file order:

- for each blob record of the transaction (blob storages): ``B`` + oid +
  tid + size (8 bytes each), then ``b`` + data frames that add up to
  `size` bytes: the blob file;
- ``D`` + bytes: the next bytes of the file (one transaction, cut in
  frames of at most `CHUNK` bytes);

then ``E`` + the end position (8 bytes) + the sha256 of the bytes sent
after `length`, and closes.  A pack of the primary during the copy ends it
with ``N`` (the replica keeps what it verified).

The replica checks every transaction it receives (`TransactionScanner`:
the header and every data record, tids increasing, lengths consistent)
before it counts it, and the end digest before it opens the storage.
Nothing here is unpickled.
"""
import hashlib
import struct

from ZODB.FileStorage.FileStorage import packed_version
from ZODB.FileStorage.format import (DATA_HDR, DATA_HDR_LEN, TRANS_HDR,
                                     TRANS_HDR_LEN)
from ZODB.utils import u64, z64

PROTOCOL_SEED = b'zrsd-seed1'
FILE_HEADER = packed_version    # the first 4 bytes of a FileStorage file
CHUNK = 1 << 20           # bytes of file or blob per frame
HAS_BLOBS = 1

_TRANS = struct.Struct(TRANS_HDR)
_DATA = struct.Struct(DATA_HDR)
_QUERY = struct.Struct('>Q8s')
_INFO = struct.Struct('>QB')
_BLOB = struct.Struct('>8s8sQ')
_END = struct.Struct('>Q32s')


class SeedError(Exception):
    """The other side broke the seed protocol, or sent a bad file."""


def new_digest():
    return hashlib.sha256()


def query(length, last_tid):
    return b'Q' + _QUERY.pack(length, last_tid)


def info(length, has_blobs):
    return b'I' + _INFO.pack(length, HAS_BLOBS if has_blobs else 0)


def proof(digest):
    return b'P' + digest


def refusal(reason):
    return b'N' + reason.encode('utf-8', 'replace')[:1000]


def blob_header(oid, tid, size):
    return b'B' + _BLOB.pack(oid, tid, size)


def end(position, digest):
    return b'E' + _END.pack(position, digest)


_LAYOUTS = {b'Q': _QUERY, b'I': _INFO, b'B': _BLOB, b'E': _END}


def decode(payload, expected):
    """(kind, fields) of a message whose kind is one of `expected`; the
    fields of `Q`, `I`, `B`, `E` unpacked, the bytes of the others."""
    kind, body = payload[:1], payload[1:]
    if kind not in expected:
        raise SeedError('unexpected message %r (expected %s)' % (
            payload[:20], ', '.join(k.decode() for k in expected)))
    layout = _LAYOUTS.get(kind)
    if layout is None:
        if kind == b'P' and len(body) != 32:
            raise SeedError('a proof of %d bytes' % len(body))
        return kind, body
    if len(body) != layout.size:
        raise SeedError('%r message of %d bytes, expected %d' % (
            kind, len(body), layout.size))
    return kind, layout.unpack(body)


def check_transaction(header_bytes, pos, previous_tid):
    """(tid, length, status) of a transaction header at `pos`, checked."""
    tid, tlen, status, ulen, dlen, elen = _TRANS.unpack(header_bytes)
    status = status.decode('latin-1')
    if status not in ' pu':
        raise SeedError('transaction at %d: status %r' % (pos, status))
    if tid <= previous_tid:
        raise SeedError('transaction at %d: tid %s not after %s' % (
            pos, tid.hex(), previous_tid.hex()))
    if tlen < TRANS_HDR_LEN + ulen + dlen + elen:
        raise SeedError('transaction at %d: length %d shorter than its '
                        'header' % (pos, tlen))
    return tid, tlen, status, TRANS_HDR_LEN + ulen + dlen + elen


class TransactionScanner:
    """Check the bytes of a FileStorage file as they arrive, transaction
    by transaction, from `position` (after the transaction `last_tid`).

    `feed(data)` returns the transactions completed by `data`, as (pos,
    tid, end, records), records being the (oid, offset in the transaction)
    of each data record.
    """

    def __init__(self, position, last_tid=z64):
        self.position = position        # where the pending bytes start
        self.last_tid = last_tid
        self._pending = bytearray()

    def feed(self, data):
        pending = self._pending
        pending += data
        done = []
        at = 0          # consumed bytes of `pending`, dropped at the end
        try:
            while True:
                if self.position == 0:
                    if len(pending) - at < 4:
                        break
                    if bytes(pending[at:at + 4]) != FILE_HEADER:
                        raise SeedError('not a FileStorage file: %r'
                                        % bytes(pending[at:at + 4]))
                    at += 4
                    self.position = 4
                    continue
                if len(pending) - at < TRANS_HDR_LEN:
                    break
                tid, tlen, _, header_length = check_transaction(
                    bytes(pending[at:at + TRANS_HDR_LEN]), self.position,
                    self.last_tid)
                if len(pending) - at < tlen + 8:
                    break
                with memoryview(pending) as view:
                    records = self._records(view[at:at + tlen + 8],
                                            header_length, tid, tlen)
                done.append((self.position, tid, self.position + tlen + 8,
                             records))
                at += tlen + 8
                self.position += tlen + 8
                self.last_tid = tid
        finally:
            del pending[:at]
        return done

    @property
    def pending(self):
        """Bytes received after the last complete transaction."""
        return len(self._pending)

    def _records(self, raw, at, tid, tlen):
        pos = self.position
        if u64(raw[tlen:tlen + 8]) != tlen:
            raise SeedError('transaction at %d: trailing length %d, header '
                            'says %d' % (pos, u64(raw[tlen:tlen + 8]), tlen))
        records = []
        while at < tlen:
            if at + DATA_HDR_LEN > tlen:
                raise SeedError('transaction at %d: a data record runs past '
                                'its end' % pos)
            oid, serial, prev, tloc, vlen, plen = _DATA.unpack(
                raw[at:at + DATA_HDR_LEN])
            size = plen or 8
            if (serial != tid or tloc != pos or vlen or prev >= pos
                    or at + DATA_HDR_LEN + size > tlen):
                raise SeedError('transaction at %d: bad data record at %d'
                                % (pos, pos + at))
            if not plen and \
                    u64(raw[at + DATA_HDR_LEN:at + DATA_HDR_LEN + 8]) >= pos:
                raise SeedError('transaction at %d: a back pointer forward '
                                'at %d' % (pos, pos + at))
            records.append((oid, at))
            at += DATA_HDR_LEN + size
        return records


def prefix_digest(read, length, stopped=None):
    """What a proof carries: the sha256 of the first `length` bytes of a
    file read by `read(pos, size)`, CHUNK bytes at a time; None once
    `stopped()` says to give up."""
    digest = new_digest()
    for pos in range(0, length, CHUNK):
        if stopped is not None and stopped():
            return None
        digest.update(read(pos, min(CHUNK, length - pos)))
    return digest.digest()


def last_transaction(read, length):
    """The tid of the transaction ending at `length` of a file read by
    `read(pos, size)`, z64 for a file of its header only; SeedError when
    the bytes there are no transaction end."""
    if length <= 4:
        return z64
    tlen = u64(read(length - 8, 8))
    pos = length - 8 - tlen
    if tlen < TRANS_HDR_LEN or pos < 4:
        raise SeedError('no transaction ends at %d' % length)
    tid, tlen2 = _TRANS.unpack(read(pos, TRANS_HDR_LEN))[:2]
    if tlen2 != tlen:
        raise SeedError('no transaction ends at %d' % length)
    return tid
