"""The primary's storage: a FileStorage served writable whose commits wake
the streamers of its secondaries.

`PrimaryStorage` is the FileStorage's own but for `tpc_begin`,
`tpc_finish` (which wakes the streamers through the storage's
`CommitNotifier`), `pack` and `close`.  A stopping primary stops its
commits (`stop_commits`) before its secondaries catch up; a promoted
replica becomes one (`PrimaryStorage.promoted`).  `CommitNotifier` and the
resume-tid recovery serve replica storages too (`zrsd.replica.storage`):
a cascade's streamers wait on its notifier.
"""
import asyncio
import bisect
import logging
import os
import threading

import zope.interface
import ZODB.interfaces
from ZODB.POSException import ReadOnlyError
from ZODB.utils import z64

from zrsd import disk, internals
from zrsd.internals import last_committed_tid
from zrsd.primary.history import recent_invalidations

logger = logging.getLogger(__name__)


def recover_last_transaction(fs):
    """Make `fs.lastTransaction()` tell the truth; return the resume tid."""
    tid = last_committed_tid(fs)
    reported = fs.lastTransaction()
    if reported != tid:
        logger.warning(
            '%s: FileStorage reports %s as last transaction, but the last '
            'committed transaction in the file is %s (a commit was '
            'interrupted between vote and finish); resuming after %s',
            fs.getName(), reported.hex(), tid.hex(), tid.hex())
        internals.set_last_transaction(fs, tid)
    return tid


def make_packs_durable(fs):
    """FileStorage replaces its data file with the packed one without an
    fsync: make `fs`'s packs fsync the packed file first (the packer
    returns holding the commit lock, released here on failure)."""

    def packer_then_fsync(packer, storage, referencesf, stop, gc):
        result = packer(storage, referencesf, stop, gc)
        if result is not None:
            try:
                disk.fsync_path(internals.file_name(storage) + '.pack',
                                'syncing the packed file')
            except BaseException:
                internals.release_commit_lock(storage)
                raise
        return result

    internals.wrap_packer(fs, packer_then_fsync)


def sync_pack_switch(fs):
    """The switch of files at the end of a pack is a pair of renames:
    fsync their directory."""
    disk.fsync_path(os.path.dirname(os.path.abspath(
        internals.file_name(fs))), 'syncing the directory of a pack')


def last_invalidations(storage, count):
    """`lastInvalidations` of a primary's or a replica's storage (ZEO's
    invalidation queue when it starts serving), up to what it committed
    (published), reading only the headers (`recent_invalidations`)."""
    _, end = storage.committed_file()
    return recent_invalidations(
        internals.file_name(storage.file_storage), end, count)


def run_close_hook(storage):
    """Run and clear `storage.before_close` (stopping its links first)."""
    hook, storage.before_close = storage.before_close, None
    if hook is not None:
        hook()


class CommitNotifier:
    """Wakes the streamers of a storage when a transaction is committed,
    and remembers the recent tids (how far behind a secondary is).

    `notify(tids)` is called by whatever commits (any thread), after the
    commit; a streamer reads `generation`, checks for new data, then
    `wait(generation, stopped)`s.  Subscribers (`subscribe`) are called
    after each notification, in the notifying thread.
    """

    RECENT = 100000    # tids remembered (8 bytes each, plus a list slot)

    def __init__(self, last_tid=z64):
        self._condition = threading.Condition()
        self.generation = 0
        self._recent = []          # committed tids since `_base`, in order
        self._base = last_tid      # the last tid before `_recent`
        self._subscribers = ()

    def subscribe(self, callback):
        self._subscribers += (callback,)

    def unsubscribe(self, callback):
        self._subscribers = tuple(
            known for known in self._subscribers if known != callback)

    def notify(self, tids=()):
        with self._condition:
            self.generation += 1
            self._recent.extend(tids)
            if len(self._recent) > 2 * self.RECENT:
                self._base = self._recent[-self.RECENT - 1]
                del self._recent[:-self.RECENT]
            self._condition.notify_all()
        for callback in self._subscribers:
            callback()

    def commits_after(self, tid):
        """How many remembered commits come after `tid`; None when `tid`
        is older than what is remembered."""
        with self._condition:
            if tid < self._base:
                return None
            return len(self._recent) - bisect.bisect_right(self._recent, tid)

    def wake(self):
        """Wake every waiter without a commit (e.g. to let one stop)."""
        with self._condition:
            self._condition.notify_all()

    def wait(self, generation, stopped, timeout=60.0):
        """Wait until a commit after `generation`, or `stopped()`."""
        with self._condition:
            self._condition.wait_for(
                lambda: self.generation != generation or stopped(), timeout)


class PrimaryStorage:
    """A FileStorage served writable; each commit wakes the streamers.

    Everything but `tpc_finish`, `pack` and `close` is the FileStorage's
    own (ZEO sees its interfaces too).
    """

    def __init__(self, fs, commits=None, durable_packs=True):
        self._fs = fs
        if durable_packs:
            make_packs_durable(fs)
        self.has_blobs = ZODB.interfaces.IBlobStorage.providedBy(fs)
        self.resume_tid = recover_last_transaction(fs)
        self.commits = (commits if commits is not None
                        else CommitNotifier(self.resume_tid))
        internals.sync_storage_files(fs)
        # Held while a transaction finishes; `stop_commits` takes it so
        # that none is half-way when it returns.
        self._finishing = threading.Lock()
        self._commits_stopped = False
        zope.interface.alsoProvides(self, zope.interface.providedBy(fs))

    @classmethod
    def promoted(cls, replica):
        """The writable storage of a promoted `ReplicaStorage` (whose
        replication has stopped): the same FileStorage with its own commit
        path back, and the same notifier, so that the streamers of its
        secondaries keep following."""
        replica.writer.detach()
        storage = cls(replica.file_storage, commits=replica.commits,
                      durable_packs=False)  # a replica's packs are already
        storage.before_close = replica.before_close
        return storage

    @property
    def file_storage(self):
        return self._fs

    def committed_file(self):
        """(file, end) of the committed transactions (fsynced by
        FileStorage at each commit), for the streamers."""
        return internals.committed_file(self._fs)

    def __getattr__(self, name):
        return getattr(self._fs, name)

    lastInvalidations = last_invalidations

    def __len__(self):
        return len(self._fs)

    def __repr__(self):
        return '<PrimaryStorage %s>' % self._fs.getName()

    def stop_commits(self):
        """Refuse every commit from now on (a stopping primary: what its
        secondaries must receive before it closes is then final)."""
        with self._finishing:
            self._commits_stopped = True

    def _check_commits(self):
        if self._commits_stopped:
            raise ReadOnlyError('the primary is stopping: no more commits')

    def tpc_begin(self, transaction, tid=None, status=' '):
        self._check_commits()
        return self._fs.tpc_begin(transaction, tid, status)

    def tpc_vote(self, transaction):
        """FileStorage's vote, then the transaction's blob files made
        durable before its commit (`zrsd.disk`)."""
        with self._fail_stop('writing a transaction'):
            result = self._fs.tpc_vote(transaction)
            if self.has_blobs:
                disk.sync_blob_files(
                    internals.uncommitted_blob_files(self._fs),
                    internals.blob_directory(self._fs))
        return result

    def tpc_finish(self, transaction, f=None):
        with self._finishing:
            # A transaction voted before the stop is not committed after
            # it: its client sees the error; ZEO aborts it.
            self._check_commits()
            with self._fail_stop('committing a transaction'):
                tid = self._fs.tpc_finish(transaction, f)
        self._notify(tid)
        return tid

    def _notify(self, tid):
        """Wake the streamers once ZEO has answered the committer: called
        from ZEO's event loop, the notification waits for the loop's next
        turn, so that the sends to caught-up secondaries (done right there,
        see `zrsd.primary.followers`) and the catching-up streamers' work
        overlap the committer's think time instead of delaying its reply."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:         # not committed through ZEO
            self.commits.notify([tid])
        else:
            loop.call_soon(self.commits.notify, [tid])

    def _fail_stop(self, doing):
        return disk.fail_stop(internals.file_name(self._fs), doing)

    def pack(self, *args, **kw):
        try:
            result = self._fs.pack(*args, **kw)
            sync_pack_switch(self._fs)
        except disk.StorageFailure as failure:
            disk.stop_process(failure)
            raise
        self.commits.notify()  # streamers notice the new file at once
        return result

    before_close = None  # set when the links must stop first

    def close(self):
        run_close_hook(self)
        self.commits.wake()
        # ZEO closes its storages before its client connections: a commit
        # voted but not finished when the server stopped is still open
        # here, and its blob files are already in the blob directory.
        if internals.abort_transaction_in_progress(self._fs):
            logger.info('%s: aborted a commit in progress at shutdown',
                        self._fs.getName())
        self._fs.close()
