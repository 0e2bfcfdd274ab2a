"""The secondary's replication state machine.

A `Receiver` is fed the payloads of the frames a primary sends, decides for
each whether it is a message or raw data, checks the stream checksum and the
order of messages, and drives a *sink* that applies transactions.  It knows
the protocol module and the sink interface, nothing about sockets or
storages.  One `Receiver` serves one connection; all of its methods run in
the thread that owns that connection (the reactor thread).

The sink interface (see `zrsd.replica.writer.ReplicaWriter` for the real
one)::

    begin(tid, status, user, description, extension)
    store(oid, tid, data, data_txn)
    open_blob() -> writable binary file with a .name
    store_blob(oid, tid, data, data_txn, blob_file)   # blob_file is closed
    commit() -> tid
    abort()

Any violation raises `ProtocolError` after aborting the open transaction;
the receiver is then `FAILED` and refuses further input.  Nothing of a
transaction reaches the disk for good before its `C` message passed the
checks, because only `commit()` finishes a transaction.
"""
import enum
import logging

from zrsd.protocol import (BLOB_BLOCK_SIZE, ChecksumMismatch,
                           MessageDecoder, ProtocolError)
from zrsd.protocol import Begin, Commit, Store, StoreBlob, StreamChecksum
from zrsd.tids import describe_tid

logger = logging.getLogger(__name__)


class State(enum.Enum):
    IDLE = 'between transactions'
    IN_TRANSACTION = 'in a transaction'
    RECORD_DATA = 'expecting record data'
    BLOB_RECORD_DATA = 'expecting blob record data'
    BLOB_BLOCKS = 'expecting blob blocks'
    FAILED = 'failed'


class Receiver:
    """Replication state machine for one connection (see module docstring).

    `start_tid` is the tid the secondary sent in the handshake: it seeds the
    checksum and is the floor for the next transaction id.  With
    `check_checksums` false, digests are computed but not compared.
    `on_commit(tid, nbytes)` is called after each committed transaction.
    """

    def __init__(self, sink, start_tid, decoder=None, check_checksums=True,
                 on_commit=None):
        self.sink = sink
        self.last_tid = start_tid
        self.decoder = decoder or MessageDecoder()
        self.check_checksums = check_checksums
        self.on_commit = on_commit
        self.state = State.IDLE
        self.checksum = StreamChecksum(start_tid)
        self.warned_no_checksum = False
        self.failed_tid = None    # the transaction open when input failed
        self._tid = None          # tid of the open transaction
        self._nbytes = 0          # payload bytes of the open transaction
        self._record = None       # pending Store/StoreBlob
        self._record_data = None  # record data of a pending blob record
        self._blob_file = None
        self._blocks_left = 0

    @property
    def transaction_tid(self):
        """The tid of the transaction being received, or None."""
        return self._tid

    def frame_received(self, payload):
        """Handle one frame's payload; raises ProtocolError on violation."""
        if self.state is State.FAILED:
            raise ProtocolError('receiver already failed')
        try:
            handler = self._handlers[self.state]
            handler(self, payload)
        except BaseException:
            self.failed_tid = self._tid
            self.abort()
            self.state = State.FAILED
            raise
        # Every payload counts, the C message's included (after its check).
        self.checksum.update(payload)
        self._nbytes += len(payload)

    def abort(self):
        """Abandon the open transaction, if any (idempotent)."""
        if self._blob_file is not None:
            self._blob_file.close()
            self._blob_file = None
        if self._tid is not None:
            self._tid = None
            self.sink.abort()

    # -- states -----------------------------------------------------------

    def _idle(self, payload):
        message = self.decoder.decode(payload)
        if not isinstance(message, Begin):
            raise self._unexpected(message)
        if message.tid <= self.last_tid:
            raise ProtocolError('non-increasing tid %s after %s' % (
                describe_tid(message.tid), describe_tid(self.last_tid)))
        self._nbytes = 0
        self._tid = message.tid
        self.sink.begin(*message)
        self.state = State.IN_TRANSACTION

    def _in_transaction(self, payload):
        message = self.decoder.decode(payload)
        if isinstance(message, Store):
            self._check_record_tid(message)
            if message.inline:
                self.sink.store(message.oid, message.tid, message.data,
                                message.data_txn)
            else:
                self._record = message
                self.state = State.RECORD_DATA
        elif isinstance(message, StoreBlob):
            self._check_record_tid(message)
            self._record = message
            self.state = State.BLOB_RECORD_DATA
        elif isinstance(message, Commit):
            self._commit(message)
        else:
            raise self._unexpected(message)

    def _record_data(self, payload):
        record, self._record = self._record, None
        self.state = State.IN_TRANSACTION
        self.sink.store(record.oid, record.tid, payload or None,
                        record.data_txn)

    def _blob_record_data(self, payload):
        self._record_data = payload or None
        self._blob_file = self.sink.open_blob()
        self._blocks_left = self._record.nblocks
        self.state = State.BLOB_BLOCKS
        if not self._blocks_left:
            self._store_blob()

    def _blob_block(self, payload):
        if len(payload) > BLOB_BLOCK_SIZE:
            raise ProtocolError('blob block of %d bytes exceeds %d' % (
                len(payload), BLOB_BLOCK_SIZE))
        self._blob_file.write(payload)
        self._blocks_left -= 1
        if not self._blocks_left:
            self._store_blob()

    def _store_blob(self):
        record, self._record = self._record, None
        blob_file, self._blob_file = self._blob_file, None
        blob_file.close()
        self.state = State.IN_TRANSACTION
        self.sink.store_blob(record.oid, record.tid, self._record_data,
                             record.data_txn, blob_file)
        self._record_data = None

    _handlers = {
        State.IDLE: _idle,
        State.IN_TRANSACTION: _in_transaction,
        State.RECORD_DATA: _record_data,
        State.BLOB_RECORD_DATA: _blob_record_data,
        State.BLOB_BLOCKS: _blob_block,
    }

    # -- helpers ----------------------------------------------------------

    def _commit(self, message):
        if message.checksum is None:
            if not self.warned_no_checksum:
                logger.warning('primary sends commits without checksums '
                               '(an old zc.zrs); the stream is not verified')
                self.warned_no_checksum = True
        elif self.check_checksums and \
                message.checksum != self.checksum.digest():
            raise ChecksumMismatch('checksum mismatch at commit of %s'
                                   % describe_tid(self._tid))
        tid, nbytes = self._tid, self._nbytes
        self.sink.commit()
        self._tid = None
        self.last_tid = tid
        self.state = State.IDLE
        if self.on_commit is not None:
            self.on_commit(tid, nbytes)

    def _check_record_tid(self, message):
        if message.tid != self._tid:
            raise ProtocolError('record tid %s in transaction %s' % (
                describe_tid(message.tid), describe_tid(self._tid)))

    def _unexpected(self, message):
        kind = {Begin: 'T', Store: 'S', StoreBlob: 'B', Commit: 'C'}[
            type(message)]
        return ProtocolError('unexpected %s message %s' % (
            kind, self.state.value))
