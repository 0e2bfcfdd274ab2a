"""Durability: the order of zrsd's writes, and what a failing disk does.

The rule (README, "Durability"): whatever a ZEO client or a downstream
secondary has been shown is on this node's disk.  A transaction with blobs
is made durable in this order, so that a power loss at any point leaves a
consistent state:

1. after the vote, each blob file (fsync; FileStorage moved it into the
   blob directory when it was stored), and every directory on its path up
   to the blob directory's root (fsync: the new names);
2. then the transaction's commit in Data.fs: on a replica the data,
   written with status 'c', is synced before the status byte that commits
   it is written and synced (`internals.ReplicaCommitPath`, at once or
   with its group during a catch-up); a primary keeps FileStorage's own
   commit (status byte, then one fsync);
3. only then is the transaction published: ZEO's invalidations, the
   replica's `lastTransaction()`, what its own secondaries are sent.

Fail-stop: an error writing, flushing or syncing Data.fs or a blob file is
a `StorageFailure`.  The node does not retry (after a failed fsync Linux
may report the lost writeback only once, and a retry "succeeds") and does
not sync again on the way out: `stop_process` logs one CRITICAL line
(path, errno, what was being written) and exits with status 1, so that
systemd or zdaemon restarts zrsd, which resumes from what is really on
disk.
"""
import contextlib
import ctypes
import io
import logging
import os
import sys

import zc.lockfile
from ZODB.POSException import StorageSystemError

logger = logging.getLogger(__name__)

EXIT_STORAGE_FAILURE = 1


class StorageFailure(Exception):
    """Writing or syncing one of a storage's files failed."""

    def __init__(self, path, doing, error):
        super().__init__(path, doing, error)
        self.path, self.doing, self.error = path, doing, error

    def __str__(self):
        error = self.error
        if isinstance(error, OSError) and error.errno is not None:
            reason = '[Errno %d] %s' % (error.errno, error.strerror)
        else:
            reason = '%s: %s' % (type(error).__name__, error)
        return '%s: %s while %s' % (self.path, reason, self.doing)


@contextlib.contextmanager
def writing(path, doing):
    """Turn an OSError inside the block into a `StorageFailure`."""
    try:
        yield
    except StorageFailure:
        raise
    except OSError as exc:
        raise StorageFailure(path, doing, exc) from exc


@contextlib.contextmanager
def fail_stop(path, doing, on_failure=None):
    """`writing`, and a `StorageFailure` calls `on_failure(failure)`
    (default: `stop_process`) before it propagates."""
    try:
        with writing(path, doing):
            yield
    except StorageFailure as failure:
        (on_failure or stop_process)(failure)
        raise


def opened(path, open_storage, blob_dir=None):
    """`open_storage()`; a disk error while opening (FileStorage saving a
    truncated tail on a full disk, say) is a `StorageFailure`.

    A blob directory whose layout marker is empty was being created when
    the machine stopped (the marker is written, then synced): the marker
    is removed, and ZODB writes it again.
    """
    layout = os.path.join(blob_dir, '.layout') if blob_dir else None
    if layout is not None and os.path.isfile(layout) and \
            os.path.getsize(layout) == 0:
        logger.warning('%s: empty (its creation was interrupted); '
                       'removed, ZODB writes it again', layout)
        with writing(layout, 'removing an empty blob layout marker'):
            os.remove(layout)
    try:
        return open_storage()
    except StorageSystemError as exc:
        if not isinstance(exc.__context__, OSError):
            raise
        raise StorageFailure(path, 'opening the storage (%s)' % exc,
                             exc.__context__) from exc
    except OSError as exc:
        raise StorageFailure(path, 'opening the storage', exc) from exc


class StorageLocked(Exception):
    """Another process has the storage open (its lock file is locked)."""

    def __init__(self, path, pid):
        super().__init__(path, pid)
        self.path, self.pid = path, pid

    def __str__(self):
        return '%s is in use by another process (%s); a storage is served ' \
            'by one process only' % (self.path, describe_process(self.pid))


def lock_holder(path):
    """The pid written in a FileStorage's lock file, or None."""
    try:
        with open(path + '.lock') as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ensure_unlocked(path):
    """StorageLocked when a process holds the lock of the FileStorage
    `path` (checked before opening it, so that a second zrsd says so in
    one line instead of FileStorage's traceback)."""
    if not os.path.exists(path + '.lock'):
        return
    try:
        lock = zc.lockfile.SimpleLockFile(path + '.lock')  # writes nothing
    except zc.lockfile.LockError:
        raise StorageLocked(path, lock_holder(path)) from None
    lock.close()


def describe_process(pid):
    """'pid 123: zrsd -C /etc/zrsd/zrs.conf' (Linux /proc), or less."""
    if pid is None:
        return 'pid unknown'
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            words = f.read().split(b'\0')
    except OSError:
        return 'pid %d' % pid
    words = [os.path.basename(w.decode(errors='replace')) if i == 0
             else w.decode(errors='replace')
             for i, w in enumerate(words) if w]
    return 'pid %d: %s' % (pid, ' '.join(words)) if words else 'pid %d' % pid


def log_failure(failure):
    """The one CRITICAL line of a storage failure."""
    logger.critical('storage failure, stopping: %s; a restart resumes '
                    'from what is on disk', failure)


def stop_process(failure):
    """Log `failure` in one CRITICAL line and exit with status 1 at once
    (no clean-up: nothing more is written to a failing disk)."""
    log_failure(failure)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    sys.stderr.flush()
    os._exit(EXIT_STORAGE_FAILURE)


def fsync_path(path, doing):
    """fsync a file or a directory by name."""
    with writing(path, doing):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_blob_files(paths, root):
    """Make blob files durable with their names: fsync each file, then
    each directory from its own up to `root` (the blob directory), once
    per call."""
    root = os.path.abspath(root)
    directories = set()
    for path in paths:
        fsync_path(path, 'syncing a blob file')
        directory = os.path.dirname(os.path.abspath(path))
        while directory not in directories:
            directories.add(directory)
            if len(directory) <= len(root):
                break
            directory = os.path.dirname(directory)
    for directory in sorted(directories, key=len, reverse=True):
        fsync_path(directory, 'syncing a blob directory')


def sync_filesystem(path, doing):
    """Make everything written to the filesystem holding `path` durable,
    names included (Linux syncfs(2): one call instead of an fsync per
    file and directory, for the many blob files of a file copy); where
    syncfs is missing, the global sync(2)."""
    with writing(path, doing):
        if _syncfs is None:
            os.sync()
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error), path)
        finally:
            os.close(fd)


def _load_syncfs():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def sync_storage_files(data_file, blob_root=None):
    """Make a storage's own files and names durable when it is opened (it
    may just have been created): the data file and its directory; the
    blob directory's layout marker, the blob directory and the directory
    holding it."""
    paths = [(data_file, 'syncing the data file'),
             (os.path.dirname(os.path.abspath(data_file)),
              'syncing the directory of the data file')]
    if blob_root is not None:
        layout = os.path.join(blob_root, '.layout')
        if os.path.exists(layout):
            paths.append((layout, 'syncing the blob layout marker'))
        paths += [(blob_root, 'syncing the blob directory'),
                  (os.path.dirname(os.path.abspath(blob_root)),
                   'syncing the directory of the blob directory')]
    for path, doing in paths:
        fsync_path(path, doing)


class BlobFile(io.FileIO):
    """A blob file being received: a write error is a `StorageFailure`."""

    def __init__(self, path):
        super().__init__(path, 'wb')

    def write(self, data):
        with writing(self.name, 'writing a blob file'):
            return super().write(data)

    def close(self):
        with writing(self.name, 'closing a blob file'):
            super().close()
