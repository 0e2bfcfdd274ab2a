"""The replica storage: a read-only face for ZEO and an apply path for ZRS.

`ReplicaStorage` wraps a FileStorage.  ZEO sees a read-only storage: reads
are delegated, every write (store, undo, new_oid, tpc_begin, ...) raises
`ReadOnlyError`; `pack` packs the local file (unless `pack refuse`), as
zc.zrs secondaries do.  The replication state machine applies transactions
through its `writer` (`ReplicaWriter`, the sink: `begin`, `store`,
`open_blob`, `store_blob`, `commit`, `abort`; `zrsd.replica.writer`), one
local transaction per primary transaction, same tid.

A cascade's commits wake the streamers of its own secondaries through its
`CommitNotifier` (`zrsd.primary.storage`); a promoted replica becomes a
`PrimaryStorage` on the same FileStorage.

Visibility follows durability (`zrsd.disk`): a replicated transaction is
published -- ZEO's invalidations, `lastTransaction()`, the end of the file
a cascade's streamers read, the data `load` returns -- only once the data
file is fsynced: at once in live replication, with its group during a
catch-up.  Until then ZEO clients read the state of the last published
transaction.

Threads: the sink methods run in the reactor thread; the read methods run in
the ZEO server's loop thread (and ZEO's worker threads).  FileStorage's own
locks make that safe.  Publication happens under the storage lock: first
the new `lastTransaction()`, which `load` and `loadBefore` follow (a client
that loads at an invalidation's tid as soon as it arrives gets that
revision), then the invalidations, so a ZEO client that registers
concurrently sees the new `lastTransaction()` or gets the invalidation.
"""
import logging
import os
import threading
import time

import zope.interface
import ZODB.interfaces
from ZODB.POSException import ReadOnlyError
from ZODB.TimeStamp import TimeStamp
from ZODB.FileStorage.FileStorage import CorruptedFileStorageError
from ZODB.FileStorage.format import CorruptedError
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64, z64

from zrsd import disk, internals
from zrsd.internals import last_committed_tid
from zrsd.replica.writer import (BLOB_TEMP_PREFIX, BLOB_TEMP_SUFFIX,
                                 ReplicaWriter)
from zrsd.primary.storage import (CommitNotifier, last_invalidations,
                                  make_packs_durable,
                                  recover_last_transaction, run_close_hook,
                                  sync_pack_switch)

logger = logging.getLogger(__name__)

# Methods ZEO (and ZODB tools) may call that only read (besides
# `lastTransaction`, `load` and `loadBefore`, which stop at what is
# published).
_READ_METHODS = (
    'getName', 'getSize', 'sortKey', 'loadSerial', 'history', 'iterator',
    'record_iternext', 'getTid', 'undoLog', 'undoInfo',
    'supportsUndo',
)
_BLOB_READ_METHODS = ('loadBlob', 'openCommittedBlobFile',
                      'temporaryDirectory')


def remove_temporary_blob_files(fs):
    """Remove the temporary blob files that a transaction interrupted by a
    crash (kill -9, power loss) left in the blob directory's scratch
    directory; returns how many.  Only zrsd's own: nothing else there is
    touched."""
    directory = fs.temporaryDirectory()
    removed = 0
    for name in os.listdir(directory):
        if name.startswith(BLOB_TEMP_PREFIX) and \
                name.endswith(BLOB_TEMP_SUFFIX):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            removed += 1
    if removed:
        logger.info('%s: removed %d temporary blob files of an interrupted '
                    'transaction from %s', fs.getName(), removed, directory)
    return removed


def open_replica_file(path, open_storage):
    """`open_storage()` of a replica's FileStorage at `path`.

    A power loss may leave an unsynced tail that FileStorage refuses to
    open (the later part of a transaction reached the disk, its header did
    not).  Nothing in it was ever published (zrsd.disk): a replica cuts
    the file before the first transaction FileStorage cannot read (the cut
    bytes are kept in `Data.fs.trN`) and the primary sends it again.
    """
    try:
        return open_storage()
    except (CorruptedFileStorageError, CorruptedError) as exc:
        reason = str(exc)
        internals.release_half_opened(exc)
    pos, size = internals.truncate_damaged_tail(path)
    logger.warning('%s: cannot be opened (%s); cut at %d (of %d bytes) '
                   'before the first unreadable transaction, never '
                   'published; the primary sends the rest again',
                   path, reason, pos, size)
    return open_storage()


@zope.interface.implementer(
    ZODB.interfaces.IStorage,
    ZODB.interfaces.IStorageIteration,
    ZODB.interfaces.IStorageUndoable,
)
class ReplicaStorage:
    """A FileStorage served read-only; `writer` applies replication."""

    def __init__(self, fs, pack='allow'):
        self._fs = fs
        self._db = None
        self.pack_policy = pack  # the <zrs> key: allow or refuse
        # Whatever the policy: a promoted replica packs as a primary.
        make_packs_durable(fs)
        for name in _READ_METHODS:
            setattr(self, name, getattr(fs, name))
        self.has_blobs = ZODB.interfaces.IBlobStorage.providedBy(fs)
        if self.has_blobs:
            for name in _BLOB_READ_METHODS:
                setattr(self, name, getattr(fs, name))
            zope.interface.alsoProvides(self, ZODB.interfaces.IBlobStorage)
            remove_temporary_blob_files(fs)
        self.resume_tid = recover_last_transaction(fs)
        internals.sync_storage_files(fs)
        self.commits = CommitNotifier(self.resume_tid)
        # Replicated commits pass this gate; holding it keeps commits out
        # while ZEO reads the recent invalidations and registers.
        self.commit_gate = threading.Lock()
        self._hold_until_registered = False
        self.writer = ReplicaWriter(fs, self)

    def hold_commits_until_registered(self):
        """Keep replicated commits waiting until `registerDB` is called.

        For storages opened before their ZEO server exists (runzeo's
        `%import zrsd`): ZEO reads the recent invalidations, then
        registers; commits in between would be missing from its queue.
        """
        self.commit_gate.acquire()
        self._hold_until_registered = True

    @property
    def file_storage(self):
        """The FileStorage underneath (read by the primary's streamers)."""
        return self._fs

    def invalidate(self, tid, oids):
        """Tell ZEO's clients about a replicated commit (under the lock)."""
        if self._db is not None and oids:
            self._db.invalidate(tid, oids)

    # -- what is published ----------------------------------------------------

    def lastTransaction(self):
        """The last published (durable) transaction."""
        return self.writer.published_tid

    def loadBefore(self, oid, tid):
        published = self.writer.published_tid
        result = self._fs.loadBefore(oid, min(tid, p64(u64(published) + 1)))
        if result is not None and result[2] is not None and \
                result[2] > published:
            # Its successor is not published: current as far as ZEO knows.
            result = result[0], result[1], None
        return result

    def load(self, oid, version=''):
        published = self.writer.published_tid  # before the read
        data, serial = self._fs.load(oid)
        if serial > published:
            result = self.loadBefore(oid, p64(u64(published) + 1))
            if result is None:
                raise POSKeyError(oid)
            data, serial = result[:2]
        return data, serial

    def committed_file(self):
        """(file, end) of the published transactions, for the streamers of
        a cascade (see `internals.committed_file`)."""
        with internals.storage_lock(self._fs):
            file, end = internals.committed_file(self._fs)
            return file, self.writer.published_end(end)

    lastInvalidations = last_invalidations   # up to what is published

    def __len__(self):
        return len(self._fs)

    def __repr__(self):
        return '<ReplicaStorage %s>' % self._fs.getName()

    # -- the read-only face -------------------------------------------------

    def isReadOnly(self):
        return True

    def registerDB(self, db):
        """ZEO's StorageServer registers itself here to get invalidations."""
        self._db = db
        self._release_held_commits()

    def _release_held_commits(self):
        if self._hold_until_registered:
            self._hold_until_registered = False
            self.commit_gate.release()

    def tpc_transaction(self):
        # ZEO asks for the storage's current transaction; clients never
        # have one here.
        return None

    def _read_only(self, *args, **kw):
        raise ReadOnlyError()

    new_oid = tpc_begin = store = restore = undo = deleteObject = _read_only
    storeBlob = restoreBlob = checkCurrentSerialInTransaction = _read_only
    tpc_vote = tpc_finish = _read_only

    def pack(self, t, referencesf, gc=None):
        """Pack the local file to time `t`, as zc.zrs secondaries do.

        ZEO lets clients pack a read-only storage (zeopack connects
        read-only) and calls this from a thread of its own.  A pack is
        history retention only: it is never replicated, and the current
        state stays the primary's.  Replication goes on meanwhile:
        FileStorage's packer copies the file without the commit lock, then
        holds it (`ReplicaWriter.begin` waits in `tpc_begin`) to copy the
        transactions committed since and to switch files under the storage
        lock; `ReplicaWriter._finish_finish` and `sync` use whichever
        `_file` is current under that lock, and the packer never touches
        the transaction buffer.  FileStorage removes the blob files of the
        records it drops; a cascade's streamers cope (see
        zrsd.primary.streamer).

        The last committed transaction is never packed: a pack drops a
        transaction left without reachable records, and a replica resumes
        after the last transaction in its file.
        """
        if self.pack_policy == 'refuse':
            raise ReadOnlyError()
        fs = self._fs
        last = last_committed_tid(fs)
        if last == z64:
            return  # an empty file: nothing to pack
        t = min(t, TimeStamp(last).timeTime() - 0.001)
        stop = TimeStamp(*time.gmtime(t)[:5] + (t % 60,))
        size = fs.getSize()
        logger.info('%s: pack to %s UTC started (%d bytes)', fs.getName(),
                    stop, size)
        started = time.monotonic()
        # FileStorage's packer stops at a transaction whose status is
        # still 'c' (a deferred group commit): none while it runs, every
        # commit is synced and published at once, so nothing is pending
        # in the old file's positions when the files switch.
        self.writer.packing = True
        try:
            self.writer.sync()
            fs.pack(t, referencesf, gc)
            sync_pack_switch(fs)
        except disk.StorageFailure as failure:
            self.writer.storage_failed(failure)
            raise
        finally:
            self.writer.packing = False
        self.commits.notify()  # streamers notice the new file at once
        logger.info('%s: pack to %s UTC done in %.1f s (%d -> %d bytes)',
                    fs.getName(), stop, time.monotonic() - started, size,
                    fs.getSize())

    def tpc_abort(self, transaction):
        """Nothing to abort: clients cannot begin transactions here."""

    before_close = None  # set when replication must stop first

    def close(self):
        # Closed without ever being registered (e.g. runzeo could not
        # listen): let a held commit through, or stopping would wait on it.
        self._release_held_commits()
        run_close_hook(self)
        self.writer.abort()
        self.writer.sync()
        self._fs.close()
