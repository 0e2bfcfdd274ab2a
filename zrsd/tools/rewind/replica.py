"""The local side of `zrsd-rewind`: the replica's FileStorage file.

The file is locked (`lock_storage`: the daemon must be stopped) and read
without opening the storage: `committed_transactions` walks the
transaction headers, `Replica` reads transactions with FileStorage's own
iterator and the blob files through a `FilesystemHelper`.  `cut`
truncates the file durably and removes its index and the blob files of
the removed transactions (`removed_transactions`).
"""
import hashlib
import os

import zc.lockfile
import ZODB.FileStorage
from ZODB.blob import FilesystemHelper, is_blob_record
from ZODB.FileStorage.format import TRANS_HDR_LEN

from zrsd.primary.history import TxnHeader


class RewindError(Exception):
    """An expected failure: one line on stderr, exit status 2."""


def error_text(exc):
    """The message of `exc`, or its type when the message is empty."""
    return str(exc) or type(exc).__name__


def lock_storage(path):
    """Take the FileStorage lock of `path` (the daemon must be stopped)."""
    try:
        return zc.lockfile.LockFile(path + '.lock')
    except zc.lockfile.LockError:
        try:
            with open(path + '.lock') as f:
                pid = f.read().strip() or 'unknown'
        except OSError:
            pid = 'unknown'
        raise RewindError('%s is in use (is zrsd running? pid %s)' % (
            path, pid))


def committed_transactions(path):
    """The headers (`zrsd.primary.history.TxnHeader`) of the committed
    transactions of the FileStorage file at `path`, in file order.

    The walk stops at a transaction that was never finished (status 'c',
    a crash between vote and finish) or that runs past the end of the
    file: what follows is not part of the history and goes with the cut.
    """
    headers = []
    with open(path, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(4) != ZODB.FileStorage.packed_version:
            raise RewindError('%s is not a FileStorage file' % path)
        pos = 4
        while pos + TRANS_HDR_LEN <= size:
            header = TxnHeader(pos, os.pread(f.fileno(), TRANS_HDR_LEN, pos))
            if header.status == 'c' or header.end > size:
                break
            headers.append(header)
            pos = header.end
    return headers


class Replica:
    """The local FileStorage file of the section, and its blobs.

    Transactions are read with FileStorage's own iterator, started at the
    positions `committed_transactions` found; the storage is not opened.
    """

    def __init__(self, path, blob_dir):
        self.path = path
        self.headers = committed_transactions(path)
        self.tids = [header.tid for header in self.headers]
        self.size = os.path.getsize(path)
        self.blobs = FilesystemHelper(blob_dir) if blob_dir else None

    def iterator(self, k, stop=None):
        """FileStorage's iterator over transactions k to `stop` (a tid;
        None: to the last committed one)."""
        return ZODB.FileStorage.FileIterator(
            self.path, stop=stop or self.tids[-1], pos=self.headers[k].pos)

    def blob_path(self, oid, tid):
        return self.blobs.getBlobFilename(oid, tid)

    def blob_digest(self, oid, tid):
        """sha256 of the local blob file of (oid, tid), or None."""
        if self.blobs is None:
            return None
        try:
            with open(self.blob_path(oid, tid), 'rb') as f:
                return hashlib.file_digest(f, 'sha256').digest()
        except FileNotFoundError:
            return None


def removed_transactions(replica, m):
    """[(tid, user, description, blob files)] of the replica's
    transactions from m on; the blob files listed are those that exist."""
    removed = []
    transactions = replica.iterator(m)
    for txn in transactions:
        blob_files = []
        if replica.blobs is not None:
            for record in txn:
                if is_blob_record(record.data):
                    path = replica.blob_path(record.oid, record.tid)
                    if path not in blob_files and os.path.exists(path):
                        blob_files.append(path)
        removed.append((txn.tid, txn.user, txn.description, blob_files))
    transactions.close()
    return removed


def fsync_directory(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cut(path, end, blob_files):
    """Truncate the file at `end` (durably), then drop its index and the
    blob files (a crash in between leaves only unreferenced files)."""
    with open(path, 'r+b') as f:
        f.truncate(end)
        os.fsync(f.fileno())
    fsync_directory(os.path.dirname(os.path.abspath(path)))
    try:
        os.remove(path + '.index')
    except FileNotFoundError:
        pass
    for blob_file in blob_files:
        os.remove(blob_file)
