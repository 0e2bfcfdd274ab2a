"""One replica's copy of the primary's file (zrsd-seed1, own thread).

A `Seeder` is a `Streamer` (its thread, batches, back-pressure and `send`)
that sends bytes of the file instead of ZRS messages: it proves that the
replica's file is a prefix of this one (`zrsd.seedprotocol`), then sends
each committed transaction after it, the transaction's blob files first.

The primary hashes its own prefix (`PrefixHash`) as soon as the replica
asks, while the replica hashes its file: the two hashes overlap.
"""
import logging
import os
import threading

from ZODB.blob import is_blob_record
from ZODB.POSException import POSKeyError

from zrsd import seedprotocol as seed
from zrsd.primary.history import CommittedFile, CorruptFile
from zrsd.primary.streamer import PackedUnderfoot, Streamer

logger = logging.getLogger(__name__)


class _NoChecksum:
    """The copy has its own digest (of file bytes), not ZRS's checksum."""

    def update(self, data):
        pass


class PrefixHash:
    """The sha256 of the primary's first `length` bytes (if it has them),
    computed in its own thread, and the reader that read them: the copy
    goes on with the same reader, which notices a pack in between.

    Made in the reactor thread when a replica asks; `take` (the seeder's
    thread) waits for it; `close` (the reactor thread) drops it unused.
    """

    def __init__(self, source, length):
        self.length = length
        self._lock = threading.Lock()
        self._reader = self._digest = self._error = None
        self._abandoned = False
        self._thread = threading.Thread(
            target=self._run, args=(source,), name='zrsd-prefix-hash',
            daemon=True)
        self._thread.start()

    def _run(self, source):
        try:
            reader = CommittedFile(source.fs, source.committed)
        except Exception as exc:
            self._error = exc
            return
        try:
            end, _ = reader.committed_end()
            if self.length <= end:
                self._digest = seed.prefix_digest(
                    reader.read, self.length, lambda: self._abandoned)
        except Exception as exc:
            self._error = exc
        with self._lock:
            self._reader = reader
            if self._abandoned:
                self._close()

    def take(self):
        """(reader, digest or None); the caller closes the reader."""
        self._thread.join()
        if self._error is not None:
            self.close()
            raise self._error
        with self._lock:
            reader, self._reader = self._reader, None
        return reader, self._digest

    def close(self):
        with self._lock:
            self._abandoned = True
            self._close()

    def _close(self):
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class Seeder(Streamer):
    """Send the file after the replica's `length` bytes, whose sha256 the
    replica says is `digest` and whose last transaction is `last_tid`;
    `prefix` is the `PrefixHash` of those bytes here."""

    def __init__(self, source, length, last_tid, digest, prefix, send, done,
                 name, blobs=False, in_flight=None):
        super().__init__(source, last_tid, send, done, name, blobs,
                         in_flight)
        self.checksum = _NoChecksum()
        self.length = length
        self.digest = digest
        self.prefix = prefix
        self.prefix_digest = None

    def _open(self):
        reader, self.prefix_digest = self.prefix.take()
        return reader

    def _stream(self, reader):
        end, packed = reader.committed_end()
        reason = ('the primary was packed since it hashed its first %d '
                  'bytes' % self.length if packed
                  else self._check_prefix(reader, end))
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
        if self.prefix_digest is None:
            return ('the primary had fewer than the replica\'s %d bytes when '
                    'it asked' % self.length)
        if self.prefix_digest != self.digest:
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
