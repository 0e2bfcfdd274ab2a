"""One secondary's reader: a thread streaming ZRS frames.

A `Streamer` turns the primary's committed transactions (read through
`zrsd.primary.history.CommittedFile`, from where the history guard says)
into ZRS frames (see `zrsd.protocol`), hands them to the connection in
batches, waits while the connection is paused (back-pressure), and, once
caught up, sleeps until the storage's `CommitNotifier` says something was
committed.  A stopping primary asks it to `finish`: send what is committed,
then end.

Threads: each `Streamer` runs in its own thread; `pause`, `resume`,
`finish` and `stop` are called from the reactor thread; `send` (given by
the network side) must be safe to call from the streamer thread.
"""
import logging
import os
import threading
from typing import NamedTuple

from ZODB.blob import is_blob_record
from ZODB.POSException import POSKeyError

from zrsd import protocol
from zrsd.primary.history import CommittedFile, CorruptFile, LargeData

logger = logging.getLogger(__name__)

BATCH = 256 << 10           # bytes handed to the connection at once


class PackedUnderfoot(Exception):
    """A pack replaced the file (and removed blob files) in the middle of
    a transaction being sent; the connection must be dropped, so that the
    secondary discards it and resumes from the packed file."""


class Source(NamedTuple):
    """Where a streamer reads: the storage's FileStorage, its
    `CommitNotifier`, the primary's `TidIndex`, and the storage's
    `committed_file` (the end of what a replica published; see
    `CommittedFile`)."""
    fs: object
    notifier: object
    tid_index: object
    committed: object = None


class Streamer:
    """Stream one secondary's transactions after `start_tid` (own thread).

    `send(chunks)` delivers a list of bytes to the connection (thread-safe);
    `done(error)` is called once at the end, with None or an exception.
    With `in_flight`, at most that many batches are on their way to the
    connection: whoever delivers them calls `written()` for each once it
    is in the transport (the reactor thread, whose queue would otherwise
    hold whatever a fast reader produces before the first pause).
    """

    def __init__(self, source, start_tid, send, done, name, blobs=False,
                 in_flight=None):
        self.source = source
        self.start_tid = self.last_tid = start_tid
        self.checksum = protocol.StreamChecksum(start_tid)
        self._send, self._done = send, done
        self.name = name
        self.blobs = blobs
        self._slots = (threading.Semaphore(in_flight) if in_flight
                       else None)
        self.position = None      # file offset after the last one sent
        self.caught_up = False    # has it sent all there was, once?
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
        self.source.notifier.wake()

    def written(self):
        """A batch `send` was given is in the transport (see `in_flight`)."""
        if self._slots is not None:
            self._slots.release()

    def stop(self):
        self._stopped = True
        self._running.set()
        if self._slots is not None:
            self._slots.release()
        self.source.notifier.wake()

    def join(self, timeout=None):
        self._thread.join(timeout)

    # -- the streamer thread ----------------------------------------------

    def _run(self):
        reader = CommittedFile(self.source.fs, self.source.committed)
        error = None
        try:
            self._stream(reader)
        except Exception as exc:
            error = exc
        finally:
            reader.close()
        self._done(error)

    def _stream(self, reader):
        tid_index, notifier = self.source.tid_index, self.source.notifier
        end, _ = reader.committed_end()
        pos, note = tid_index.start_position(reader, self.last_tid, end)
        if note is not None:
            logger.warning('%s: %s; streaming from the next transaction',
                           self.name, note)
        logger.info('%s: streaming transactions after %s (%s)', self.name,
                    self.last_tid.hex(),
                    'zrs2.1' if self.blobs else 'zrs2.0')
        while not self._stopped:
            generation = notifier.generation
            end, reopened = reader.committed_end()
            if reopened:
                logger.info('%s: storage file replaced (pack); resuming '
                            'after %s', self.name, self.last_tid.hex())
                # If the pack dropped the (emptied) transactions up to the
                # one last sent, this is the end: wait for the next commit.
                pos = tid_index.find_after(reader, self.last_tid, end)
            if pos < end:
                # Stop at a pack: what the old file holds may refer to blob
                # files the pack removed.
                while (pos < end and not self._stopped
                       and not reader.replaced()):
                    pos = self.position = self._send_transaction(
                        reader, pos, end)
                self._flush()
            elif self._finishing:
                return
            else:
                self.position = pos
                self.caught_up = True
                notifier.wait(generation,
                              lambda: self._stopped or self._finishing)

    def _send_transaction(self, reader, pos, end):
        header, meta, records = reader.transaction(pos, end)
        if header.status == 'u':  # undone by an old-style undo: skip
            return header.end
        self._payload(protocol.encode_begin(
            meta.tid, meta.status, meta.user, meta.description,
            meta.extension_bytes))
        # ZEO stores a blob record twice in one transaction (store, then
        # storeBlobEnd); both name the same blob file, so send it once.
        blobs_sent = set()
        for oid, tid, data, data_txn in records:
            if (self.blobs and isinstance(data, bytes) and data
                    and oid not in blobs_sent and is_blob_record(data)):
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
            blob = open(self.source.fs.loadBlob(oid, tid), 'rb')
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
        # A `LargeData` goes out slice by slice, each batch waiting for the
        # connection (back-pressure), never whole.
        self._batch.append(protocol.frame_length(payload))
        self._batch_size += 4
        self.bytes += len(payload) + 4
        pieces = (payload.slices() if isinstance(payload, LargeData)
                  else (payload,))
        for piece in pieces:
            self.checksum.update(piece)
            self._batch.append(piece)
            self._batch_size += len(piece)
            if self._batch_size >= BATCH:
                self._flush()

    def _flush(self):
        if self._batch:
            batch, self._batch, self._batch_size = self._batch, [], 0
            # Back-pressure: wait while the connection is paused, and for
            # a free slot.
            self._running.wait()
            if self._slots is not None:
                self._slots.acquire()
            if not self._stopped:
                self._send(batch)
