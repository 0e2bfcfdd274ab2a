"""Every use of FileStorage's and ZEO's private internals, behind one door.

zrsd relies on a few things that ZODB's FileStorage and ZEO's
StorageServer do not offer as an interface: the committed end of the file
and the file object (to stream committed transactions and notice a pack),
FileStorage's last step of a commit (a replica writes the status byte only
once the data is synced, per transaction or per group), its temporary
transaction file, its recovery scan (to cut a damaged tail), its blob
helper, its packer hook and commit lock, the files of a half-built
FileStorage, ZEO's per-storage client lists and invalidation queue, and
what a Twisted TCP transport has not sent yet.  Nothing else in zrsd
touches a `_private` name of ZODB, ZEO or Twisted: upgrading one is a
review of this module against the new release.

At import, the installed ZODB, ZEO and Twisted versions are compared with
those this module was verified against (`VERIFIED`); another version logs
a WARNING naming this module.
"""
import importlib.metadata
import io
import logging
import os
import sys
import traceback

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from ZEO.StorageServer import StorageServer as _ZEOStorageServer
from ZEO.StorageServer import StorageServerDB
from ZODB.FileStorage.FileStorage import FileStorage, TempFormatter
from ZODB.fsIndex import fsIndex
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import u64, z64

from zrsd import disk

logger = logging.getLogger(__name__)

_fs_module = sys.modules['ZODB.FileStorage.FileStorage']

# Distribution -> the (major, minor) releases this module was read against.
VERIFIED = {'ZODB': ((6, 4),), 'ZEO': ((6, 2),),
            'Twisted': ((26, 10),)}


def _release(version):
    return tuple(int(part) for part in version.split('.')[:2]
                 if part.isdigit())


def check_versions(installed=None):
    """Warn about ZODB, ZEO or Twisted releases this module was not
    verified against; returns the list of warnings.  `installed` maps
    names to versions (default: what is installed)."""
    warnings = []
    for name, releases in VERIFIED.items():
        if installed is not None:
            version = installed[name]
        else:
            version = importlib.metadata.version(name)
        if _release(version) not in releases:
            warnings.append(
                '%s %s is installed; zrsd uses its internals and was '
                'verified against %s: review zrsd/internals.py' % (
                    name, version, ', '.join(
                        '%d.%d' % release for release in releases)))
    for text in warnings:
        logger.warning(text)
    return warnings


check_versions()


# -- FileStorage: the committed file -----------------------------------------

def storage_lock(fs):
    """FileStorage's storage lock (a context manager)."""
    return fs._lock


def file_name(fs):
    """The path of the data file."""
    return fs._file_name


def committed_file(fs):
    """(file object, committed end) under the storage lock.  The file
    object changes when a pack replaces the file."""
    with fs._lock:
        return fs._file, fs._pos


def current_file(fs):
    """The file object FileStorage reads and writes now (see
    `committed_file`)."""
    with fs._lock:
        return fs._file


def last_committed_tid(fs):
    """The tid of the last transaction really committed in `fs`'s file.

    FileStorage's own `lastTransaction()` is wrong after a crash between
    `tpc_vote` and `tpc_finish`: on the first reopen it reports the tid of
    the truncated, never-committed transaction.  This reads the trailer of
    the last complete transaction record instead.
    """
    with fs._lock:
        pos = fs._pos
        if pos <= 4:
            return z64
        fs._file.seek(pos - 8)
        tlen = u64(fs._file.read(8))
        return fs._read_txn_header(pos - 8 - tlen).tid


def truncate_damaged_tail(path):
    """Cut the data file at `path` before its first transaction that
    FileStorage cannot read, keeping the cut bytes in `path.trN` as
    FileStorage does; returns (position, former size).  Uses FileStorage's
    own scan in its recovery mode."""
    with open(path, 'r+b') as file:
        size = file.seek(0, 2)
        pos = _fs_module.read_index(file, path, fsIndex(), {}, recover=1,
                                    read_only=1)[0]
        if pos < size:
            _fs_module._truncate(file, path, pos)
        file.flush()
        os.fsync(file.fileno())
    return pos, size


def release_half_opened(exc):
    """Close the files of a FileStorage whose constructor raised `exc`:
    its lock file stays locked as long as the half-built object lives
    (a log record keeping the traceback would keep it alive)."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        fs = frame.f_locals.get('self')
        if isinstance(fs, FileStorage):
            for name in ('_file', '_lock_file'):
                file = getattr(fs, name, None)
                if file is not None:
                    file.close()
            return


def set_last_transaction(fs, tid):
    """Make `fs.lastTransaction()` (and new tids) follow `tid`."""
    with fs._lock:
        fs._ltid = tid
        fs._ts = TimeStamp(tid)


def abort_transaction_in_progress(fs):
    """Abort the transaction `fs` is committing, if any; True if there was
    one.  FileStorage's close leaves it (and the blob files it already
    moved into the blob directory) behind."""
    transaction = fs._transaction
    if transaction is None:
        return False
    fs.tpc_abort(transaction)
    return True


# -- FileStorage: blobs -------------------------------------------------------

def blob_directory(fs):
    """The root of `fs`'s blob directory, or None without blobs."""
    return getattr(getattr(fs, 'fshelper', None), 'base_dir', None)


def sync_storage_files(fs):
    """`disk.sync_storage_files` for `fs` (at open), after writing out
    what FileStorage wrote into a new file."""
    with fs._lock:
        fs._file.flush()
    disk.sync_storage_files(fs._file_name, blob_directory(fs))


def uncommitted_blob_files(fs):
    """The paths of the blob files of the transaction `fs` is committing
    (FileStorage moves them into the blob directory when they are stored).
    """
    helper = fs.fshelper
    return [helper.getBlobFilename(oid, serial)
            for oid, serial in fs.dirty_oids]


class _DiskFailure(logging.Filter):
    """FileStorage logs a disk error with a traceback where zrsd logs it in
    one CRITICAL line and stops (`zrsd.disk`): a failed last commit step
    ("Failure in _finish. Closing.") and a truncated tail it could not
    save when opening ("couldn't write truncated data ...").  Those
    records are dropped."""

    MESSAGES = ('Failure in _finish', "couldn't write truncated data")

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (str(record.msg).startswith(self.MESSAGES)
                    and isinstance(exc, OSError))


logging.getLogger('ZODB.FileStorage').addFilter(_DiskFailure())


# -- FileStorage: the commit path of a replica -------------------------------

class TransactionBuffer:
    """FileStorage's temporary transaction file, in memory when small.

    FileStorage writes each transaction's records to a temporary file, then
    copies them into the data file at vote.  It asks that file for its
    position at every record, which on a real file is a system call
    (lseek); for a replica applying thousands of transactions a second,
    those calls were the largest single cost.  This buffer keeps a
    transaction in memory, moves it to the `path` file once it grows past
    `limit` bytes, and comes back to memory at the next transaction (the
    first write at position 0).
    """

    def __init__(self, path, limit=16 << 20):
        self._path = path
        self._limit = limit
        self._memory = io.BytesIO()
        self._file = self._memory

    @property
    def spilled(self):
        return self._file is not self._memory

    def write(self, data):
        file = self._file
        if self.spilled and file.tell() == 0:
            file.close()  # a new transaction: back to memory
            file = self._file = self._memory
            file.seek(0)
        written = file.write(data)
        if not self.spilled and file.tell() > self._limit:
            self._spill()
        return written

    def _spill(self):
        disk = open(self._path, 'w+b')
        size = self._memory.tell()
        disk.write(self._memory.getbuffer()[:size])
        self._memory = io.BytesIO()  # release the big buffer
        self._file = disk

    def tell(self):
        return self._file.tell()

    def seek(self, pos, whence=0):
        return self._file.seek(pos, whence)

    def read(self, size=-1):
        return self._file.read(size)

    def close(self):
        if self.spilled:
            self._file.close()


class ReplicaCommitPath:
    """A replica's commit path: FileStorage's last commit step replaced.

    FileStorage commits a transaction by writing its status byte (the
    transaction was written with status 'c' at vote), then fsyncs.  A power
    loss before that fsync can leave the status byte on disk and part of
    the data not, so that the file holds a "committed" transaction with
    torn records (FileStorage has no checksums).  Here the status byte is
    written only once the transaction's data is durable:

    - `fsync_now()` true (live): fsync the data, write the status byte,
      fsync again;
    - false (group commit): leave the status 'c' and remember it; `sync()`
      fsyncs the group's data, writes the status bytes, fsyncs again.

    A crash before then leaves 'c' transactions, which FileStorage cuts
    when it opens the file (they were never published; the primary sends
    them again).  The temporary transaction file is a `TransactionBuffer`.
    """

    def __init__(self, fs, fsync_now):
        self._fs = fs
        self._fsync_now = fsync_now
        self._statuses = []     # [(position, status)] still 'c' on disk
        fs._finish = self._finish
        _replace_temporary_file(fs, TransactionBuffer(fs._file_name + '.tmp'))

    def _finish(self, tid, user, description, extension):
        # FileStorage's own _finish and _finish_finish (ZODB 6.4), with the
        # status byte written only after the data is durable; under the
        # storage lock (tpc_finish).
        fs = self._fs
        self._statuses.append((fs._pos, fs._tstatus))
        if self._fsync_now():
            self.sync()
        fs._pos = fs._nextpos
        fs._index.update(fs._tindex)
        fs._ltid = tid
        fs._blob_tpc_finish()

    @property
    def unsynced(self):
        """Transactions committed whose status byte is not yet written."""
        return len(self._statuses)

    def sync(self):
        """Make the committed transactions durable: sync their data, write
        their status bytes, sync (under the storage lock).  fdatasync: the
        data and the file's size, without the times a second journal
        commit would write."""
        fs = self._fs
        with fs._lock, disk.writing(fs._file_name,
                                    'committing transactions'):
            file = fs._file
            file.flush()
            os.fdatasync(file.fileno())
            if self._statuses:
                for pos, status in self._statuses:
                    file.seek(pos + 16)
                    file.write(status.encode('ascii'))
                file.flush()
                os.fdatasync(file.fileno())
                self._statuses = []

    def uninstall(self):
        """Give the FileStorage back FileStorage's own last commit step and
        temporary file (a promoted replica: ZEO commits from now on)."""
        self.sync()
        with self._fs._lock:
            del self._fs._finish       # the class's own method again
            _replace_temporary_file(
                self._fs, open(self._fs._file_name + '.tmp', 'w+b'))


def _replace_temporary_file(fs, tfile):
    fs._tfile.close()
    fs._tfile = tfile
    fs._tfmt = TempFormatter(tfile)


# -- FileStorage: packing -----------------------------------------------------

def wrap_packer(fs, wrapper):
    """Make `fs`'s pack call `wrapper(packer, storage, referencesf, stop,
    gc)` with FileStorage's packer (or the configured one)."""
    packer = fs.packer

    def wrapped(storage, referencesf, stop, gc):
        return wrapper(packer, storage, referencesf, stop, gc)

    fs.packer = wrapped


def release_commit_lock(fs):
    """Release the commit lock a packer returned holding (FileStorage
    releases it only after a successful switch of files)."""
    fs._commit_lock.release()


# -- ZEO ----------------------------------------------------------------------

class StorageServer(_ZEOStorageServer):
    """ZEO's StorageServer, safe for invalidations from a foreign thread.

    ZEO's own `invalidate` iterates the live list of a storage's client
    connections while the loop thread may add or remove entries; a client
    that disconnects mid-iteration would make another client miss an
    invalidation.  This version iterates over a snapshot (otherwise the
    steps of ZEO 6.2's own).
    """

    def invalidate(self, zeo_storage, storage_id, tid, invalidated):
        invq = self.invq[storage_id]
        if len(invq) >= self.invq_bound:
            invq.pop()
        invq.insert(0, (tid, invalidated))
        for client in list(self.zeo_storages_by_storage_id[storage_id]):
            if client is not zeo_storage:
                client.async_threadsafe(
                    'invalidateTransaction', tid, invalidated)


def server_address(server):
    """The address a ZEO StorageServer listens at."""
    return server.acceptor.addr


def server_loop(server):
    """The asyncio loop of a ZEO StorageServer."""
    return server.acceptor.event_loop


def client_count(server, name):
    """How many ZEO clients use storage `name`."""
    return len(server.zeo_storages_by_storage_id.get(name, ()))


def swap_storage(server, name, storage):
    """Serve `storage` as `name` from now on and disconnect the clients of
    the old one (loop thread); returns how many were disconnected."""
    server.storages[name] = storage
    storage.registerDB(StorageServerDB(server, name))
    clients = list(server.zeo_storages_by_storage_id.get(name, ()))
    for client in clients:
        client.connection.close()
    return len(clients)


def load_index(path, pos):
    """The `fsIndex` FileStorage saved beside the file `path` (its
    `.index`), if it covers the file up to exactly `pos`; else None."""
    try:
        info = fsIndex.load(path + '.index')
    except Exception:
        return None
    index = info.get('index')
    if info.get('pos') != pos or not isinstance(index, fsIndex):
        return None
    return index


def save_index(path, index, pos):
    """Save `index` (oid -> position of its last data record) as the
    `.index` of the file `path` up to `pos`, the way FileStorage saves
    its own (it then opens the file without reading it all)."""
    name = path + '.index'
    with disk.writing(name, 'saving the index'):
        index.save(pos, name + '.index_tmp')
        disk.fsync_path(name + '.index_tmp', 'syncing the index')
        os.replace(name + '.index_tmp', name)


# -- Twisted: a TCP transport's buffer ---------------------------------------

def is_plain_tcp(transport):
    """Is `transport` Twisted's own TCP connection, without TLS (its
    socket carries exactly what is written to it)?"""
    return (isinstance(transport, tcp.Connection)
            and not ISSLTransport.providedBy(transport)
            and not getattr(transport, 'TLS', False))


def transport_unsent(transport):
    """Bytes a Twisted TCP transport was given and has not handed to its
    socket yet (reactor thread)."""
    return (len(transport.dataBuffer) - transport.offset
            + transport._tempDataLen)
