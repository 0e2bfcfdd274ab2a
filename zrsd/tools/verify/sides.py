"""Reading one side of `zrsd-verify`: a FileStorage file or a ZEO server.

`open_source` turns a command-line argument into an open `Source` (the
file read-only, or a read-only ZEO client); `HistoryReader` streams the
side's history in a thread of its own, at most `READ_AHEAD` items ahead
of the comparison.  A side that cannot be opened or read raises
`VerifyError` (exit status 2).
"""
import contextlib
import os
import queue
import shutil
import socket
import tempfile
import threading

import ZEO
import ZODB.FileStorage
import ZODB.interfaces
from ZEO.Exceptions import ClientDisconnected, ServerException
from ZODB.POSException import POSError

from zrsd.network.sockets import parse_address

DEFAULT_TIMEOUT = 30.0

# What reading a side may raise when the side (not this program) fails.
READ_ERRORS = (ClientDisconnected, ServerException, POSError, OSError)

# Items a reader may hold ahead of the comparison (transactions and
# records): the bound on memory, with the largest record.
READ_AHEAD = 256


class VerifyError(Exception):
    """A side cannot be opened or read: exit status 2."""


def parse_source(text):
    """('file', path) or ('zeo', ZEO address) for a command-line argument.

    `fs:PATH` and `zeo:ADDRESS` say it explicitly; otherwise a name ending
    in `.fs` is a file and anything else a ZEO address.
    """
    if text.startswith('fs:'):
        kind, rest = 'file', text[3:]
    elif text.startswith('zeo:'):
        kind, rest = 'zeo', text[4:]
    elif text.endswith('.fs'):
        kind, rest = 'file', text
    else:
        kind, rest = 'zeo', text
    if not rest:
        raise ValueError('empty %s in %r' % (
            'path' if kind == 'file' else 'address', text))
    if kind == 'file':
        return kind, rest
    family, address = parse_address(rest)
    # ZEO takes a unix socket as a plain path, TCP as (host, port).
    return kind, address if family != socket.AF_UNIX else rest


class Source:
    """One side of the comparison: an open storage and what names it.

    `last_tid` is the storage's last transaction when it was opened: the
    snapshot the comparison stops at; `has_blobs`: blob files can be read
    (a file opened with its blob directory, a ZEO server with blobs).
    `cache` is a directory removed at `close` (a ZEO client's blob cache).
    """

    def __init__(self, role, text, kind, storage, cache=None):
        self.role = role
        self.text = text
        self.kind = kind
        self.storage = storage
        self.cache = cache
        self.last_tid = storage.lastTransaction()
        self.has_blobs = ZODB.interfaces.IBlobStorage.providedBy(storage)

    @property
    def name(self):
        """'the primary at HOST:PORT', 'the replica file PATH'."""
        return 'the %s %s %s' % (
            self.role, 'file' if self.kind == 'file' else 'at', self.text)

    def close(self):
        try:
            self.storage.close()
        finally:
            if self.cache is not None:
                shutil.rmtree(self.cache, ignore_errors=True)


def open_source(role, text, storage_name='1', timeout=DEFAULT_TIMEOUT,
                blob_dir=None):
    """Open the `role` ('primary' or 'replica') side named by `text`;
    `blob_dir`: the blob directory of a file."""
    try:
        kind, where = parse_source(text)
    except ValueError as exc:
        raise VerifyError('bad %s %r: %s' % (role, text, exc))
    cache = None
    if kind == 'file':
        if not os.path.isfile(where):
            raise VerifyError('%s file %s: no such file' % (role, where))
        if blob_dir is not None and not os.path.isdir(blob_dir):
            raise VerifyError('%s blob directory %s: no such directory'
                              % (role, blob_dir))
        try:
            storage = ZODB.FileStorage.FileStorage(
                where, read_only=True, blob_dir=blob_dir)
        except Exception as exc:
            raise VerifyError('cannot open the %s file %s: %s' % (
                role, where, exc_text(exc)))
    else:
        refused = _refused(where)
        if refused is not None:
            raise VerifyError('cannot reach the %s at %s: %s' % (
                role, text, refused))
        cache = tempfile.mkdtemp(prefix='zrsd-verify-blobs-')
        try:
            storage = ZEO.client(where, storage=storage_name, read_only=True,
                                 wait_timeout=timeout, blob_dir=cache,
                                 shared_blob_dir=False)
        except ClientDisconnected as exc:
            shutil.rmtree(cache)
            raise VerifyError(
                'cannot reach the %s at %s (ZEO storage %r): %s' % (
                    role, text, storage_name, exc))
        except Exception as exc:
            shutil.rmtree(cache)
            raise VerifyError('cannot open a ZEO client of the %s at %s: %s'
                              % (role, text, exc_text(exc)))
    try:
        return Source(role, text, kind, storage, cache)
    except Exception:
        storage.close()
        raise


def _refused(address):
    """Why nothing listens at `address`, when that is known at once (a
    refused connection, no such socket file); else None, and the ZEO client
    waits up to the timeout for the server."""
    family = socket.AF_UNIX if isinstance(address, str) else None
    try:
        if family is None:
            sock = socket.create_connection(address, timeout=5)
        else:
            sock = socket.socket(family)
            sock.settimeout(5)
            sock.connect(address)
    except (ConnectionRefusedError, FileNotFoundError) as exc:
        return exc.strerror
    except OSError:
        return None
    sock.close()
    return None


def exc_text(exc):
    """'Type: message' (the type alone when the message is empty)."""
    return '%s: %s' % (type(exc).__name__, exc) if str(exc) \
        else type(exc).__name__


@contextlib.contextmanager
def reading(source, what):
    """Turn a failure to read `source` into a VerifyError naming it."""
    try:
        yield
    except READ_ERRORS as exc:
        raise VerifyError('%s %s failed: %s' % (
            what, source.name, exc_text(exc)))


class Transaction:
    """A transaction's metadata, as compared."""

    __slots__ = ('tid', 'status', 'user', 'description', 'extension')

    def __init__(self, txn):
        self.tid = txn.tid
        self.status = txn.status
        self.user = txn.user
        self.description = txn.description
        self.extension = dict(txn.extension or {})


class _Stopped(Exception):
    """The comparison no longer wants what the reader reads."""


class HistoryReader:
    """Reads one side's history in a thread of its own, ahead of use.

    Over ZEO every transaction and every record is a round trip to the
    server; reading both sides at once halves the wait.  The thread puts
    ('T', Transaction), ('R', (oid, tid, data, data_txn)) for each record,
    ('E', None) after the records, and ('END', None) or ('ERR', exception)
    last, into a queue of at most `READ_AHEAD` items.  Records are read
    only for transactions up to `records_until`: beyond it the comparison
    only counts.  `max_oid` is the highest oid among the records read (for
    `compare_objects`), valid once the reader reached the end.

    Threads: `next_transaction`, `records` and `close` belong to the
    comparing (main) thread; `_run` to the reader thread.
    """

    def __init__(self, source, start, stop, records_until):
        self.source = source
        self._args = start, stop, records_until
        self._queue = queue.Queue(READ_AHEAD)
        self._stopping = False
        self._in_transaction = False
        self._ended = False
        self.max_oid = None
        self._thread = threading.Thread(
            target=self._run, daemon=True,
            name='zrsd-verify %s' % source.role)
        self._thread.start()

    # -- reader thread

    def _put(self, kind, value=None):
        if self._stopping:
            raise _Stopped()
        self._queue.put((kind, value))

    def _run(self):
        start, stop, records_until = self._args
        try:
            for txn in self.source.storage.iterator(start, stop):
                self._put('T', Transaction(txn))
                if txn.tid <= records_until:
                    for record in txn:
                        if self.max_oid is None or record.oid > self.max_oid:
                            self.max_oid = record.oid
                        self._put('R', (record.oid, record.tid, record.data,
                                        record.data_txn))
                self._put('E')
            self._put('END')
        except _Stopped:
            pass
        except BaseException as exc:
            try:
                self._put('ERR', exc)
            except _Stopped:
                pass

    # -- comparing thread

    def _get(self):
        kind, value = self._queue.get()
        if kind == 'ERR':
            self._ended = True
            if isinstance(value, READ_ERRORS):
                raise VerifyError('reading %s failed: %s' % (
                    self.source.name, exc_text(value)))
            raise value
        return kind, value

    def next_transaction(self):
        """The next transaction's metadata (its unread records skipped),
        or None at the end."""
        if self._ended:
            return None
        while self._in_transaction:
            self._in_transaction = self._get()[0] != 'E'
        kind, value = self._get()
        if kind == 'END':
            self._ended = True
            return None
        self._in_transaction = True
        return value

    def records(self):
        """The records of the transaction `next_transaction` returned."""
        while self._in_transaction:
            kind, value = self._get()
            if kind == 'E':
                self._in_transaction = False
            else:
                yield value

    def close(self):
        """Stop the thread (it may be waiting for one call to return)."""
        self._stopping = True
        # Empty the queue: a put the thread is blocked in returns, and the
        # next one sees `_stopping` (`_put` checks before it puts).
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join()
