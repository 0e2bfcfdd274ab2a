"""One secondary's reader: a thread streaming ZRS frames.

A `Streamer` turns the primary's committed transactions (read through
`zrsd.primary.history.CommittedFile`, from where the history guard says)
into ZRS frames (see `zrsd.protocol`), hands them to the connection in
batches, waits while the connection is paused (back-pressure), and, once
caught up, sleeps until the storage's `CommitNotifier` says something was
committed, or lends its stream to the committing thread
(`Source.followers`, see `zrsd.primary.followers`).  A stopping primary
asks it to `finish`: send what is committed, then end.

Threads: each `Streamer` runs in its own thread but while its stream is
lent, when `follow_step` runs in whatever thread commits (one step at a
time: `_step_lock`); `pause`, `resume`, `finish` and `stop` are called
from the reactor thread; `send` and `send_now` (given by the network side)
must be safe to call from any thread.
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
FOLLOW_LIMIT = BATCH        # the most a step sends (see `follow_step`)


class PackedUnderfoot(Exception):
    """A pack replaced the file (and removed blob files) in the middle of
    a transaction being sent; the connection must be dropped, so that the
    secondary discards it and resumes from the packed file."""


class Source(NamedTuple):
    """Where a streamer reads: the storage's FileStorage, its
    `CommitNotifier`, the primary's `TidIndex`, the storage's
    `committed_file` (the end of what a replica published; see
    `CommittedFile`), and the server's `Followers` if any."""
    fs: object
    notifier: object
    tid_index: object
    committed: object = None
    followers: object = None


class Streamer:
    """Stream one secondary's transactions after `start_tid` (own thread).

    `send(chunks)` delivers a list of bytes to the connection (thread-safe);
    `done(error)` is called once at the end, with None or an exception.
    With `in_flight`, at most that many batches are on their way to the
    connection: whoever delivers them calls `written()` for each once it
    is in the transport (the reactor thread, whose queue would otherwise
    hold whatever a fast reader produces before the first pause).
    With `send_now` (a way to send from any thread that needs no
    `written()`) and `source.followers`, a caught-up streamer lends its
    stream to the committing thread (`follow_step`).
    """

    def __init__(self, source, start_tid, send, done, name, blobs=False,
                 in_flight=None, send_now=None):
        self.source = source
        self.start_tid = self.last_tid = start_tid
        self.checksum = protocol.StreamChecksum(start_tid)
        self._send, self._done, self._send_now = send, done, send_now
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
        # While lent, the committing thread sends (`follow_step`) with the
        # streamer thread's reader, and `_returned` is clear.
        self._lent = False
        self._step_lock = threading.Lock()
        self._returned = threading.Event()
        self._reader = None
        self._reopened = False    # a step found the file replaced
        self._error = None        # what a step raised
        self._thread = threading.Thread(
            target=self._run, name='zrsd-streamer %s' % name, daemon=True)

    def start(self):
        self._thread.start()

    # -- called from the reactor thread ---------------------------------

    def pause(self):
        self._running.clear()
        self._release()

    def resume(self):
        self._running.set()

    def finish(self):
        """Send what is committed, then end (a stopping primary, whose
        commits have stopped, lets its secondaries catch up)."""
        self._finishing = True
        self._release()
        self.source.notifier.wake()

    def written(self):
        """A batch `send` was given is in the transport (see `in_flight`)."""
        if self._slots is not None:
            self._slots.release()

    def stop(self):
        self._stopped = True
        self._release()
        self._running.set()
        if self._slots is not None:
            self._slots.release()
        self.source.notifier.wake()

    def join(self, timeout=None):
        self._thread.join(timeout)

    # -- the streamer thread ----------------------------------------------

    def _run(self):
        reader = error = None
        try:
            reader = self._open()
            self._stream(reader)
        except Exception as exc:
            error = exc
        finally:
            if reader is not None:
                reader.close()
        self._done(error)

    def _open(self):
        return CommittedFile(self.source.fs, self.source.committed)

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
            if self._reopened:        # seen by a step, while lent
                reopened, self._reopened = True, False
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
                if self._send_now and self.source.followers:
                    pos = self._lend(reader)
                else:
                    notifier.wait(generation,
                                  lambda: self._stopped or self._finishing)

    def _lend(self, reader):
        """Let the committing thread send from here (see
        `zrsd.primary.followers`); return the position once it hands the
        stream back."""
        self._running.wait()      # not while paused: it would hand back
        self._reader = reader
        self._returned.clear()
        self._lent = True
        self.source.followers.lend(self)
        self._returned.wait()
        if self._error is not None:
            raise self._error
        return self.position

    # -- the committing thread, while lent --------------------------------

    def _hand_back(self):
        """The stream is the streamer thread's again; returns False."""
        if self._lent:
            self._lent = False
            self._returned.set()
        return False

    def _release(self):
        # From pause, finish or stop (the reactor thread): after the step
        # in progress, if any.
        with self._step_lock:
            self._hand_back()

    @property
    def lent(self):
        return self._lent

    def follow_step(self):
        """Send what was committed since the last step, unless the
        streamer thread must; False once the stream is handed back."""
        with self._step_lock:
            if not self._lent:
                return False
            try:
                caught_up = self._follow(self._reader)
            except Exception as exc:
                self._error, caught_up = exc, False
            if (caught_up and self._running.is_set() and not self._stopped
                    and not self._finishing):
                return True
            return self._hand_back()

    def _follow(self, reader):
        """Send the transactions committed since the last step, as long as
        they are small and without blob files; has it sent them all?"""
        if self._stopped or self._finishing:
            return False
        end, self._reopened = reader.committed_end()
        pos = self.position
        while (pos < end and not self._reopened
               and end - pos <= FOLLOW_LIMIT and self._running.is_set()
               and not reader.replaced()):
            after = self._send_transaction(reader, pos, end, lent=True)
            if after is None:
                break
            pos = self.position = after
        self._flush()
        return pos >= end and not self._reopened

    def _send_transaction(self, reader, pos, end, lent=False):
        """Send the transaction at `pos`; return where the next begins
        (None, having sent nothing, if `lent` and it has blob files)."""
        header, meta, records = reader.transaction(pos, end)
        if header.status == 'u':  # undone by an old-style undo: skip
            return header.end
        if lent:
            records = list(records)
            if self.blobs and any(
                    isinstance(data, bytes) and is_blob_record(data)
                    for _, _, data, _ in records):
                return None
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
            if self._lent:
                self._send_now(batch)
                return
            # Back-pressure: wait while the connection is paused, and for
            # a free slot.
            self._running.wait()
            if self._slots is not None:
                self._slots.acquire()
            if not self._stopped:
                self._send(batch)
