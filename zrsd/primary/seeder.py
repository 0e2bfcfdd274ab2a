"""One replica's copy of the primary's file (zrsd-seed1, own thread).

A `Seeder` is a `Streamer` (its thread, batches, back-pressure and `send`)
that sends bytes of the file instead of ZRS messages: it proves that the
replica's file is a prefix of this one (`zrsd.seedprotocol`), then sends
each committed transaction after it, the transaction's blob files first.
"""
import logging
import os

from ZODB.blob import is_blob_record
from ZODB.POSException import POSKeyError

from zrsd import seedprotocol as seed
from zrsd.primary.history import CorruptFile
from zrsd.primary.streamer import PackedUnderfoot, Streamer

logger = logging.getLogger(__name__)


class _NoChecksum:
    """The copy has its own digest (of file bytes), not ZRS's checksum."""

    def update(self, data):
        pass


class Seeder(Streamer):
    """Send the file after the replica's `length` bytes, whose sha256 the
    replica says is `digest` and whose last transaction is `last_tid`."""

    def __init__(self, source, length, last_tid, digest, send, done, name,
                 blobs=False, in_flight=None):
        super().__init__(source, last_tid, send, done, name, blobs,
                         in_flight)
        self.checksum = _NoChecksum()
        self.length = length
        self.digest = digest

    def _stream(self, reader):
        end, _ = reader.committed_end()
        reason = self._check_prefix(reader, end)
        if reason is not None:
            logger.warning('%s: not copying the file: %s', self.name, reason)
            self._payload(seed.refusal(reason))
            self._flush()
            return
        logger.info('%s: copying the file from %d to %d (%.1f MB)',
                    self.name, self.length, end, (end - self.length) / 1e6)
        digest = seed.new_digest()
        pos = self.length
        if pos == 0:
            self._send_bytes(reader, 0, 4, digest)
            pos = 4
        self.position = pos
        while pos < end and not self._stopped:
            if reader.replaced():
                self._payload(seed.refusal(
                    'the primary was packed during the copy'))
                break
            pos = self.position = self._send_transaction(reader, pos, end,
                                                         digest)
        else:
            if not self._stopped:
                self._payload(seed.end(pos, digest.digest()))
        self._flush()

    def _check_prefix(self, reader, end):
        """Why the replica's file is not a prefix of this one, or None."""
        if self.length > end:
            return ('the replica\'s file (%d bytes) is longer than the '
                    'primary\'s (%d)' % (self.length, end))
        try:
            tid = seed.last_transaction(reader.read, self.length)
        except seed.SeedError as exc:
            return 'the replica\'s file ends where the primary\'s has ' \
                'no transaction end (%s)' % exc
        if tid != self.last_tid:
            return ('the transaction ending at %d is %s here, %s on the '
                    'replica' % (self.length, tid.hex(), self.last_tid.hex()))
        digest = seed.new_digest()
        for pos in range(0, self.length, seed.CHUNK):
            digest.update(reader.read(pos, min(seed.CHUNK,
                                               self.length - pos)))
        if digest.digest() != self.digest:
            return 'the replica\'s first %d bytes differ from the ' \
                'primary\'s' % self.length
        return None

    def _send_transaction(self, reader, pos, end, digest):
        header, meta, records = reader.transaction(pos, end)
        if self.blobs:
            sent = set()
            for oid, tid, data, _ in records:
                if (isinstance(data, bytes) and data and oid not in sent
                        and is_blob_record(data)):
                    self._send_blob(reader, oid, tid)
                    sent.add(oid)
        self._send_bytes(reader, pos, header.end, digest)
        self.last_tid = header.tid
        self.transactions += 1
        return header.end

    def _send_bytes(self, reader, pos, stop, digest):
        while pos < stop:
            data = reader.read(pos, min(seed.CHUNK, stop - pos))
            digest.update(data)
            self._payload(b'D' + data)
            pos += len(data)

    def _send_blob(self, reader, oid, tid):
        try:
            blob = open(self.source.fs.loadBlob(oid, tid), 'rb')
        except (OSError, POSKeyError) as exc:
            if reader.replaced():
                raise PackedUnderfoot('a pack removed the blob file of %s at '
                                      '%s during the copy' % (oid.hex(),
                                                              tid.hex()))
            raise CorruptFile('blob file of %s at %s: %s' % (
                oid.hex(), tid.hex(), exc))
        with blob:
            size = os.fstat(blob.fileno()).st_size
            self._payload(seed.blob_header(oid, tid, size))
            while size:
                block = blob.read(min(seed.CHUNK, size))
                if not block:
                    raise CorruptFile('blob file of %s at %s shrank' % (
                        oid.hex(), tid.hex()))
                self._payload(b'b' + block)
                size -= len(block)
