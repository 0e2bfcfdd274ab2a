"""The replica's apply path: `ReplicaWriter`, the replication sink of a
`zrsd.replica.storage.ReplicaStorage`.

It applies each primary transaction as one local transaction with the same
tid (`begin`, `store`, `open_blob`, `store_blob`, `commit`, `abort`; see
`zrsd.replica.receiver` for the sink interface), and publishes it once it
is durable (see `zrsd.replica.storage` and `zrsd.disk`).

Threads: the reactor thread only.
"""
import logging
import os
import tempfile
import time

from ZODB.Connection import TransactionMetaData
from ZODB.POSException import UndoError

from zrsd import disk, internals

logger = logging.getLogger(__name__)

# zrsd's temporary files for blobs being received (see `open_blob`).
BLOB_TEMP_PREFIX, BLOB_TEMP_SUFFIX = 'zrsd-', '.blob'


class ApplyError(Exception):
    """A replicated transaction cannot be applied to this storage."""


class _UncheckedMismatch(logging.Filter):
    """FileStorage.restore logs a record whose data differ from its back
    pointer's as an ERROR.  On a replica, records are restored before the
    commit's checksum is checked; a corrupted stream is then rejected with
    its own ERROR, so this one is only a WARNING (and is still logged)."""

    def filter(self, record):
        if record.levelno == logging.ERROR and str(record.msg).startswith(
                'Mismatch between data and backpointer'):
            record.levelno, record.levelname = logging.WARNING, 'WARNING'
        return True


_mismatch_filter = _UncheckedMismatch()


class ReplicaWriter:
    """The replication sink: applies primary transactions to the file.

    Reactor thread only.  See `zrsd.replica.receiver` for the sink interface.
    """

    def __init__(self, fs, replica):
        self._fs = fs
        self._replica = replica
        self.has_blobs = replica.has_blobs
        self._transaction = None
        self._oids = []
        self._blob_files = []
        self._name = internals.file_name(fs)
        # Group commit: while `defer_sync` is set, commits skip the fsync
        # and whoever set it calls `sync()` (see zrsd.replica.client).  A
        # crash (of the process or the machine) then costs the group's
        # transactions, never published, which the primary sends again.
        self.defer_sync = False
        self.packing = False        # a pack runs: no deferred commits
        self.unsynced_since = None  # time.monotonic() of the first unsynced
        # Committed, not yet published: [(tid, oids, start position)],
        # under the storage lock (see the module docstring).
        self.unpublished = []
        self.published_tid = replica.resume_tid
        self.failure = None         # the StorageFailure that stops us
        self._commit_path = internals.ReplicaCommitPath(fs, self._fsync_now)
        logging.getLogger('ZODB.FileStorage').addFilter(_mismatch_filter)

    def _fsync_now(self):
        # Asked by the last commit step (under the storage lock): make this
        # commit durable now, or leave it to the group's `sync()`.
        if not self.defer_sync or self.packing:
            return True
        if self.unsynced_since is None:
            self.unsynced_since = time.monotonic()
        return False

    @property
    def unsynced(self):
        """Transactions committed, not yet durable (group commit)."""
        return self._commit_path.unsynced

    def detach(self):
        """Give the FileStorage back FileStorage's own last commit step
        and temporary file (a promotion: ZEO commits from now on)."""
        self.abort()
        self.sync()
        self.defer_sync = False
        self._commit_path.uninstall()

    def storage_failed(self, failure):
        """Fail-stop (`zrsd.disk`): remember `failure`, so that nothing is
        retried, and stop the process."""
        if self.failure is None:
            self.failure = failure
            disk.stop_process(failure)

    def sync(self):
        """Make every committed transaction durable (fsync), if needed, and
        publish them.  Any thread (a pack calls it too).  After a failure
        it raises that failure again: a failed sync is never retried."""
        with internals.storage_lock(self._fs):
            if self.unsynced or self.failure is not None:
                with self._writing('committing transactions'):
                    self._commit_path.sync()
            self.unsynced_since = None
            published = self._publish()
        # Once they are published (`published_end`), and outside the
        # lock: a cascade's caught-up secondaries are sent to right here.
        if published:
            self._replica.commits.notify(published)

    def _publish(self):
        # Under the storage lock: the tid first (loads follow it), then
        # the invalidations (see the module docstring).  Returns the tids.
        for tid, oids, _ in self.unpublished:
            self.published_tid = tid
            self._replica.invalidate(tid, oids)
        published = [tid for tid, _, _ in self.unpublished]
        self.unpublished = []
        return published

    def published_end(self, end):
        """The end of the published transactions in the file, given the
        committed `end` (under the storage lock)."""
        return self.unpublished[0][2] if self.unpublished else end

    def last_applied(self):
        """The last transaction committed here (published or not)."""
        return self._fs.lastTransaction()

    def _writing(self, doing):
        # A disk error while applying: fail-stop.
        if self.failure is not None:
            raise self.failure
        return disk.fail_stop(self._name, doing, self.storage_failed)

    def begin(self, tid, status, user, description, extension):
        if self._transaction is not None:
            raise ApplyError('a transaction is still open')
        last = self._fs.lastTransaction()
        if tid <= last:
            raise ApplyError('tid %s is not after the last transaction %s'
                             % (tid.hex(), last.hex()))
        meta = TransactionMetaData(user, description, extension)
        with self._writing('beginning a transaction'):
            self._fs.tpc_begin(meta, tid, status)
        self._transaction = meta
        self._oids = []

    def store(self, oid, tid, data, data_txn):
        with self._writing('storing a record'):
            self._store(oid, tid, data, data_txn)
        self._oids.append(oid)

    def _store(self, oid, tid, data, data_txn):
        meta = self._transaction
        try:
            self._fs.restore(oid, tid, data, '', data_txn, meta)
        except UndoError:
            if data is None:
                raise
            # The record the primary points back to is not in this file
            # (e.g. a replica seeded from a packed copy).  The data came
            # along, so store it without the back pointer.
            logger.warning('%s: back pointer of %s to %s not found; '
                           'storing the data itself', self._fs.getName(),
                           oid.hex(), data_txn.hex())
            self._fs.restore(oid, tid, data, '', None, meta)

    def open_blob(self):
        if not self.has_blobs:
            raise ApplyError('the primary sent a blob record, but this '
                             'storage has no blob-dir')
        directory = self._fs.temporaryDirectory()
        with self._writing('creating a blob file in %s' % directory):
            fd, path = tempfile.mkstemp(
                prefix=BLOB_TEMP_PREFIX, suffix=BLOB_TEMP_SUFFIX,
                dir=directory)
            os.close(fd)
            self._blob_files.append(path)
            return disk.BlobFile(path)  # its .name is the path

    def store_blob(self, oid, tid, data, data_txn, blob_file):
        with self._writing('storing a blob record'):
            self._fs.restoreBlob(oid, tid, data, blob_file.name, data_txn,
                                 self._transaction)
        self._oids.append(oid)

    def commit(self):
        meta, oids = self._transaction, self._oids

        def committed(tid):
            # Called by tpc_finish under the storage lock, before the data
            # file is written: published after the fsync (`sync`).
            start = internals.committed_file(self._fs)[1]
            self.unpublished.append((tid, oids, start))

        try:
            with self._writing('writing a transaction'):
                self._fs.tpc_vote(meta)
                if self.has_blobs:
                    disk.sync_blob_files(
                        internals.uncommitted_blob_files(self._fs),
                        internals.blob_directory(self._fs))
            with self._replica.commit_gate:
                with self._writing('committing a transaction'):
                    tid = self._fs.tpc_finish(meta, committed)
                if not self.unsynced:
                    self.sync()   # fsynced by tpc_finish: publish now
        except BaseException:
            self.abort()
            raise
        self._transaction = None
        self._oids = []
        self._remove_blob_files()
        return tid

    def abort(self):
        """Abandon the transaction being applied, if any (idempotent)."""
        meta, self._transaction = self._transaction, None
        self._oids = []
        if meta is not None and self.failure is None:
            try:
                self._fs.tpc_abort(meta)
            except Exception as exc:
                # E.g. ENOSPC again while FileStorage resets its temporary
                # file; the next tpc_begin resets it anew.  The failure that
                # led here is what matters and is logged by the caller.
                logger.warning('%s: abort after a failure failed too: %s: '
                               '%s', self._fs.getName(), type(exc).__name__,
                               exc)
        self._remove_blob_files()

    def _remove_blob_files(self):
        # restoreBlob renames committed blob files away; whatever is left
        # belongs to an aborted transaction.
        for path in self._blob_files:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        self._blob_files = []
