"""A replica copies its primary's file before it opens (zrsd-seed1).

A new replica, or one far behind, would rebuild every transaction from the
ZRS stream, record by record: CPU-bound, far below disk speed.  A zrsd
primary can instead send the bytes of its file after the replica's own,
once the replica proved its file is a prefix of the primary's
(`zrsd.seedprotocol`).  `copy_file` does that before the storage opens
(nothing is served yet); the replica then opens the file as usual
(FileStorage indexes the new transactions) and replicates with ZRS from
its last transaction.  Anything else (a zc.zrs primary, a prefix that
differs, a pack, a broken copy) leaves the file at its last complete,
checked transaction and ZRS does the rest.

Durability: every `SYNC_BYTES`, the blob files received and their
directories, then the data file are synced, then the marker file
(`Data.fs.seeding`) records the synced length.  After a crash, the next
start cuts the file back to that length and resumes from there.
"""
import json
import logging
import os
import ssl
import tempfile
import time

from ZODB.blob import FilesystemHelper
from ZODB.fsIndex import fsIndex
from ZODB.utils import z64

from zrsd import disk, internals
from zrsd import protocol as zrs
from zrsd import seedprotocol as seed
from zrsd.network import blocking
from zrsd.network.sockets import format_address
from zrsd.replica.writer import BLOB_TEMP_PREFIX, BLOB_TEMP_SUFFIX

logger = logging.getLogger(__name__)

SYNC_BYTES = 64 << 20
PROGRESS_INTERVAL = 10.0
CONNECT_TIMEOUT = 10.0
TIMEOUT = 60.0            # of silence from the primary during a copy


def copy_file(zrs_section):
    """Copy what the primary's file has after this replica's, when its
    `copy-file` policy says so and that is worth it; the number of bytes
    added.  Never raises for a failed copy
    (a disk failure excepted): ZRS replicates whatever is left."""
    copy = FileCopy(zrs_section)
    try:
        return copy.run()
    except (OSError, ssl.SSLError, seed.SeedError, zrs.ProtocolError) \
            as exc:
        if isinstance(exc, disk.StorageFailure):
            raise
        logger.warning('%s: copying the file from %s stopped: %s; '
                       'replicating the rest with ZRS', copy.label,
                       copy.where, exc)
        copy.keep_verified()
        return copy.copied


class FileCopy:
    """One attempt to copy the primary's file (`copy_file`)."""

    def __init__(self, zrs_section):
        self.zrs = zrs_section
        # Only when there is at least this much to fetch, and a quarter of
        # the replica's own length (the proof reads all of it).
        self.minimum = zrs_section.section.copy_file_minimum
        self.path = zrs_section.path
        self.label = '<zrs %s>' % zrs_section.name
        self.where = format_address(zrs_section.replicate_from)
        self.marker = self.path + '.seeding'
        self.copied = 0
        self.scanner = None
        self._file = None
        self._blob = None          # (oid, tid, file, bytes left)
        self._blobs = []           # received, for the next transaction
        self._blobs_unsynced = False
        self._digest = seed.new_digest()
        self._index = None

    # -- the copy, start to end ---------------------------------------------

    def run(self):
        policy = self.zrs.section.copy_file
        resuming = os.path.exists(self.marker)
        length = self._resume()
        if policy == 'off' or (policy == 'new' and length and not resuming):
            return self._declined()
        last_tid = self._last_tid(length)
        if last_tid is None:
            return self._declined()
        settings = self.zrs.section.ssl
        context = (blocking.client_tls_context(settings)
                   if settings is not None else None)
        # A primary that cannot be reached must not hold the start long.
        with blocking.connect(self.zrs.replicate_from, CONNECT_TIMEOUT,
                              settings, context) as sock:
            sock.settimeout(TIMEOUT)
            self.sock = sock
            self.frames = []
            self.decoder = zrs.FrameDecoder(self.frames.append,
                                            seed.CHUNK + 64)
            sock.sendall(zrs.encode_frame(seed.PROTOCOL_SEED)
                         + zrs.encode_frame(seed.query(length, last_tid)))
            answer = self._next_frame()
            if answer is None:
                logger.info('%s: the primary at %s does not copy files '
                            '(not zrsd); replicating with ZRS', self.label,
                            self.where)
                return self._declined()
            _, (end, flags) = seed.decode(answer, (b'I',))
            if flags & seed.HAS_BLOBS and not self.zrs.blob_dir:
                logger.info('%s: the primary has blobs, this replica no '
                            'blob-dir; replicating with ZRS', self.label)
                return self._declined()
            gap = end - length
            if gap <= 0 or gap < max(self.minimum, length // 4):
                return self._declined()
            sock.sendall(zrs.encode_frame(seed.proof(self._hash(length))))
            self._receive(length, last_tid, end)
        return self.copied

    def _declined(self):
        """No copy this time: an interrupted one is over (its file is cut
        at a synced transaction); ZRS does the rest."""
        if os.path.exists(self.marker):
            self._remove_marker()
        return 0

    def _remove_marker(self):
        with disk.writing(self.marker, 'removing the copy marker'):
            os.remove(self.marker)
        disk.fsync_path(os.path.dirname(os.path.abspath(self.marker)),
                        'syncing the directory of the copy marker')

    def _resume(self):
        """The file's length, cut back to the last synced length of an
        interrupted copy."""
        if os.path.exists(self.marker):
            with open(self.marker) as f:
                verified = json.load(f)['verified']
            with disk.writing(self.path, 'cutting an interrupted copy'):
                with open(self.path, 'r+b') as f:
                    f.truncate(verified)
                    os.fsync(f.fileno())
            logger.info('%s: a copy was interrupted: the file is cut back '
                        'to the %d bytes it had synced', self.label, verified)
            return verified
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def _last_tid(self, length):
        """The tid the file ends with, or None when its end is not a
        transaction end (FileStorage's open cuts such a tail; no copy)."""
        if length == 0:
            return z64
        with open(self.path, 'rb') as f:
            def read(pos, size):
                return os.pread(f.fileno(), size, pos)
            if read(0, 4) != seed.FILE_HEADER:
                return None
            try:
                return seed.last_transaction(read, length)
            except seed.SeedError:
                return None

    def _hash(self, length):
        if not length:          # an empty replica may have no file yet
            return seed.prefix_digest(None, 0)
        with open(self.path, 'rb') as f:
            return seed.prefix_digest(
                lambda pos, size: os.pread(f.fileno(), size, pos), length)

    def _receive(self, length, last_tid, end):
        # Index the copied records as they come, so that FileStorage opens
        # the file without reading it all: from scratch, or from the index
        # it saved up to exactly where the copy starts.
        self._index = (fsIndex() if length <= 4
                       else internals.load_index(self.path, length))
        self._write_marker(length)
        self._file = open(self.path, 'ab')
        self.scanner = seed.TransactionScanner(length, last_tid)
        self._synced = self.verified = length
        started = last_report = time.monotonic()
        logger.info('%s: copying the primary\'s file from %d to %d bytes '
                    '(%.1f MB) from %s', self.label, length, end,
                    (end - length) / 1e6, self.where)
        while True:
            payload = self._next_frame()
            if payload is None:
                raise seed.SeedError('the primary closed the connection '
                                     'before the end of the copy')
            kind = payload[:1]
            if kind == b'D':
                self._data(memoryview(payload)[1:])
            elif kind == b'b':
                self._blob_data(memoryview(payload)[1:])
            else:
                kind, fields = seed.decode(payload, (b'B', b'E', b'N'))
                if kind == b'N':
                    logger.warning('%s: the primary does not copy its file: '
                                   '%s; replicating with ZRS', self.label,
                                   fields.decode('utf-8', 'replace'))
                    self.keep_verified()
                    return
                if kind == b'B':
                    self._blob_start(*fields)
                else:
                    self._end(*fields)
                    break
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL:
                last_report = now
                logger.info('%s: copying the file: %.1f of %.1f MB, %.1f '
                            'MB/s', self.label, self.copied / 1e6,
                            (end - length) / 1e6,
                            self.copied / 1e6 / (now - started))
        elapsed = max(time.monotonic() - started, 1e-9)
        logger.info('%s: copied %.1f MB of the primary\'s file in %.1f s '
                    '(%.1f MB/s), up to %s', self.label, self.copied / 1e6,
                    elapsed, self.copied / 1e6 / elapsed,
                    self.scanner.last_tid.hex())

    def _next_frame(self):
        while not self.frames:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.decoder.feed(data)
        return self.frames.pop(0)

    # -- what arrives -------------------------------------------------------

    def _data(self, data):
        if self._blob is not None:
            raise seed.SeedError('file data in the middle of a blob file')
        self._digest.update(data)
        with disk.writing(self.path, 'writing the copied file'):
            self._file.write(data)
        self.copied += len(data)
        # A transaction counts (`verified`) once its records checked out
        # and its blob files are in place.
        completed = self.scanner.feed(data)
        if self.verified < 4 <= self.scanner.position:
            self.verified = 4       # the file header checked out
        for pos, tid, end, records in completed:
            self._place_blobs(pos, tid, records)
            if self._index is not None:
                for oid, at in records:
                    self._index[oid] = pos + at
            self.verified = end
        if self.verified - self._synced >= SYNC_BYTES:
            self._sync()

    def _blob_start(self, oid, tid, size):
        if self._blob is not None:
            raise seed.SeedError('a blob file before the last one ended')
        if not self.zrs.blob_dir:
            raise seed.SeedError('a blob file for a storage without blobs')
        if self.scanner.pending or tid <= self.scanner.last_tid:
            raise seed.SeedError('a blob file of %s at %s out of place' % (
                oid.hex(), tid.hex()))
        helper = self._blob_helper()
        # In the blob directory's scratch directory, named as the startup
        # clean-up knows them (remove_temporary_blob_files).
        fd, path = tempfile.mkstemp(prefix=BLOB_TEMP_PREFIX,
                                    suffix=BLOB_TEMP_SUFFIX,
                                    dir=helper.temp_dir)
        os.close(fd)
        self._blob = [oid, tid, disk.BlobFile(path), size]
        self._blob_end_if_done()

    def _blob_data(self, data):
        if self._blob is None or len(data) > self._blob[3]:
            raise seed.SeedError('blob data outside a blob file')
        self._blob[2].write(data)
        self._blob[3] -= len(data)
        self._blob_end_if_done()

    def _blob_end_if_done(self):
        oid, tid, blob, left = self._blob
        if not left:
            blob.close()
            self._blobs.append((oid, tid, blob.name))
            self._blob = None

    def _place_blobs(self, pos, tid, records):
        """The blob files received before the transaction at `pos` are
        its own (all of them checked first): renamed into place."""
        oids = {oid for oid, _ in records}
        for oid, blob_tid, path in self._blobs:
            if blob_tid != tid or oid not in oids:
                raise seed.SeedError(
                    'a blob file of %s at %s before the transaction %s at '
                    '%d' % (oid.hex(), blob_tid.hex(), tid.hex(), pos))
        blobs, self._blobs = self._blobs, []
        for oid, blob_tid, path in blobs:
            helper = self._blob_helper()
            helper.getPathForOID(oid, create=True)
            final = helper.getBlobFilename(oid, blob_tid)
            with disk.writing(final, 'placing a copied blob file'):
                os.replace(path, final)
            self._blobs_unsynced = True

    def _end(self, position, digest):
        if (position != self.verified or self.scanner.pending
                or self._blob is not None or self._blobs):
            raise seed.SeedError('the copy ended at %d, mid-transaction or '
                                 'with blob files left over' % position)
        if digest != self._digest.digest():
            raise seed.SeedError('the copy\'s digest does not match')
        self._sync()
        self._file.close()
        if self._index is not None:
            internals.save_index(self.path, self._index, position)
        self._remove_marker()

    # -- durability ---------------------------------------------------------

    def _sync(self):
        """Blob files, then the data file, then the marker: the file up
        to the last complete transaction is durable with its blobs."""
        if self._blobs_unsynced:
            # Thousands of blob files and directories: one syncfs.
            disk.sync_filesystem(self.zrs.blob_dir, 'syncing the copied '
                                 'blob files')
            self._blobs_unsynced = False
        with disk.writing(self.path, 'syncing the copied file'):
            self._file.flush()
            os.fdatasync(self._file.fileno())
        self._synced = self.verified
        self._write_marker(self._synced)

    def _write_marker(self, verified):
        temporary = self.marker + '.tmp'
        with disk.writing(self.marker, 'writing the copy marker'):
            with open(temporary, 'w') as f:
                json.dump({'verified': verified,
                           'primary': self.where}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.marker)
        disk.fsync_path(os.path.dirname(os.path.abspath(self.marker)),
                        'syncing the directory of the copy marker')

    def keep_verified(self):
        """After a failed or refused copy: the file cut at its last
        complete, checked transaction, synced; the marker removed."""
        if self._file is None:
            return
        if self._blob is not None:
            self._blob[2].close()
            os.remove(self._blob[2].name)
            self._blob = None
        for _, _, path in self._blobs:
            os.remove(path)
        self._blobs = []
        self._file.flush()
        with disk.writing(self.path, 'cutting a stopped copy'):
            os.truncate(self.path, self.verified)
        self._sync()
        self._file.close()
        self._file = None
        self._remove_marker()

    def _blob_helper(self):
        if not hasattr(self, '_helper'):
            self._helper = FilesystemHelper(self.zrs.blob_dir)
            self._helper.create()
        return self._helper
