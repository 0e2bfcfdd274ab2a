"""`zrsd-rewind`: truncate a forked replica to the history it shares with
its primary.

Usage: zrsd-rewind -C FILE [--dry-run] [--timeout SECONDS] [NAME]

After an unplanned failover the old primary may hold a few transactions
that the promoted replica never received.  Before it can follow the new
primary, its FileStorage must end at the last transaction both hold; a zrsd
replica's file is then byte-identical to its primary's again once it has
caught up.

The command works on the stopped daemon's files: it takes the FileStorage
lock (`Data.fs.lock`) and holds it until the file is cut.  NAME is the
`<zrs NAME>` section (default: the only one with `replicate-from`); its
`replicate-from` is the primary to compare against.

How the last shared transaction is found.  The primary is read through
the ZRS protocol only, exactly as a replica would (`zrs2.1` when the local
storage has a blob directory, TLS when the section has `<ssl>`).  A probe
of position k asks the primary for the transactions after the replica's
transaction k-1 (after z64 for k = 0) and reads the first one:

    shared(k): the primary's first transaction after the replica's
    transaction k-1 is the replica's transaction k: same tid, status, user,
    description, extension and records, in order, as (oid, tid, data,
    data_txn), and the same blob file contents.

The answer is "no" when the primary closes the connection without sending
anything (a zrsd primary refuses a start tid that is not in its history)
or stays silent for `--timeout` seconds (it has nothing after that tid).
A forked history is a shared prefix followed by different transactions, so
shared() is true up to some position and false after it: a binary search
over the replica's transactions finds the boundary in O(log n)
connections, after first trying the last transaction (the common case:
nothing to rewind).  Each probe's transaction is compared record by
record as it arrives, and judged only once its commit message passed the
stream checksum: a damaged stream never decides what is cut.

Packs.  A pack rewrites the transactions before the pack time (status
'p', records dropped, data inlined) and drops the ones left empty.  A
primary packs its own file, and so may a replica (packs are never
replicated).  So, when either side's transaction has status 'p': the same
tid counts as shared when user, description and extension agree; a primary
transaction with status 'p' and a greater tid means the replica's
transaction was packed away on the primary, and a primary transaction with
a smaller tid than a replica transaction with status 'p' means the
primary's transaction was packed away on the replica: both count as
shared.  The limit: a fork older than either side's pack time cannot be
detected by content.

The cut.  The file is truncated right after the last shared transaction
(and fsynced, with its directory), the index `Data.fs.index` is removed
(it describes the longer file), the blob files of the blob records of the
removed transactions are removed, and the FileStorage is opened once
read-write and closed, which proves that the file parses and saves a new
index.  The lock is released just before that open (FileStorage takes it
itself).

Exit status: 0 rewound, or nothing to rewind; 1 no transaction in common
(another database: nothing changed); 2 usage or configuration error, the
storage in use, the primary unreachable or misbehaving, or a local
failure.
"""
import argparse
import hashlib
import os
import socket
import ssl
import sys

import zc.lockfile
import ZODB.FileStorage
from ZODB.blob import FilesystemHelper, is_blob_record
from ZODB.FileStorage.format import TRANS_HDR_LEN
from ZODB.utils import z64

from . import config as zconfig
from . import promotion, protocol
from .options import positive_seconds
from .primary import TxnHeader
from .secondary import Receiver
from .sockets import format_address
from .tls import PEM_SUFFIXES
from .verify import (Transaction, compare_metadata, compare_record,
                     format_oid, format_tid)

REWOUND, NO_COMMON_HISTORY, ERROR = 0, 1, 2

DEFAULT_TIMEOUT = 5.0

USAGE = 'zrsd-rewind -C FILE [--dry-run] [--timeout SECONDS] [NAME]'

# Longest user or description shown for a removed transaction.
SHOWN = 40

READ_SIZE = 1 << 20


class RewindError(Exception):
    """An expected failure: one line on stderr, exit status 2."""


# -- the local replica ------------------------------------------------------

def choose_section(config, name):
    """The `<zrs>` section to rewind: `name`, or the only replica."""
    if name is not None:
        for zrs in config.storages:
            if zrs.name == name:
                if zrs.replicate_from is None:
                    raise RewindError(
                        '<zrs %s> has no replicate-from: a primary has '
                        'nothing to compare against' % name)
                return zrs
        raise RewindError('no <zrs %s> section in the configuration' % name)
    replicas = [zrs for zrs in config.storages
                if zrs.replicate_from is not None]
    if len(replicas) == 1:
        return replicas[0]
    if not replicas:
        raise RewindError('no <zrs> section has replicate-from: nothing '
                          'to rewind')
    raise RewindError('several <zrs> sections replicate (%s): name one' % (
        ', '.join(zrs.name for zrs in replicas)))


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
    """The headers (`zrsd.primary.TxnHeader`) of the committed
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


# -- one probe ----------------------------------------------------------------

class _BlobDigest:
    """Where `Receiver` writes a blob's content: only its sha256 is kept."""

    name = '<blob digest>'

    def __init__(self):
        self._sha256 = hashlib.sha256()

    def write(self, data):
        self._sha256.update(data)

    def close(self):
        pass

    def digest(self):
        return self._sha256.digest()


class ProbeSink:
    """A `zrsd.secondary.Receiver` sink comparing the primary's first
    transaction with the replica's transaction k, record by record as it
    arrives (nothing is kept but the first difference).

    After `commit`, `done` is true and `difference` is None (shared) or
    says what differs.
    """

    def __init__(self, replica, k):
        self.replica = replica
        self._transactions = replica.iterator(k, replica.tids[k])
        self.expected = next(self._transactions)
        self.done = False
        self.difference = None
        self._records = None    # the replica's records, while comparing
        self._index = 0

    def begin(self, tid, status, user, description, extension):
        expected = self.expected
        primary = protocol.Begin(tid, status, user, description, extension)
        if tid == expected.tid:
            if status == 'p' or expected.status == 'p':
                # A packed copy on either side: its records were rewritten,
                # its metadata kept.
                self.difference = compare_metadata(
                    _packed(primary), _packed(Transaction(expected)))
            else:
                self.difference = compare_metadata(
                    primary, Transaction(expected))
                self._records = iter(expected)
        elif tid > expected.tid and status == 'p':
            pass  # the replica's transaction was packed away on the primary
        elif tid < expected.tid and expected.status == 'p':
            pass  # the primary's transaction was packed away on the replica
        else:
            self.difference = 'the primary\'s next transaction is %s' % (
                format_tid(tid))

    def store(self, oid, tid, data, data_txn):
        self._compare((oid, tid, data, data_txn))

    def open_blob(self):
        return _BlobDigest()

    def store_blob(self, oid, tid, data, data_txn, blob_file):
        index = self._index
        if self._compare((oid, tid, data, data_txn)) and \
                self.replica.blob_digest(oid, tid) != blob_file.digest():
            self.difference = 'record %d: oid %s: blob file differs or is ' \
                'missing on the replica' % (index, format_oid(oid))

    def _compare(self, record):
        """Compare the primary's next record; True while they agree."""
        if self._records is None or self.difference:
            return False
        theirs = next(self._records, None)
        what = compare_record(record, None if theirs is None else (
            theirs.oid, theirs.tid, theirs.data, theirs.data_txn))
        if what:
            self.difference = 'record %d: %s' % (self._index, what)
        self._index += 1
        return not what

    def commit(self):
        if self._records is not None and not self.difference:
            extra = next(self._records, None)
            if extra is not None:
                self.difference = 'record %d: oid %s on the replica only' % (
                    self._index, format_oid(extra.oid))
        self.done = True

    def abort(self):
        pass

    def close(self):
        self._transactions.close()


class _packed:
    """The metadata a pack keeps: user, description, extension."""

    status = 'p'

    def __init__(self, txn):
        self.user = txn.user
        self.description = txn.description
        self.extension = dict(txn.extension or {})


class Primary:
    """The primary at `replicate-from`, asked through the ZRS protocol."""

    def __init__(self, zrs, blobs, timeout):
        self.zrs = zrs
        self.address = zrs.replicate_from
        self.where = format_address(self.address)
        self.protocol_name = (protocol.PROTOCOL_2_1 if blobs
                              else protocol.PROTOCOL_2_0)
        self.timeout = timeout
        self.tls = (client_tls_context(zrs.section.ssl)
                    if zrs.section.ssl is not None else None)

    def connect(self):
        """A connected (TLS) socket, with the timeout set."""
        family = (socket.AF_UNIX if isinstance(self.address, str)
                  else socket.AF_INET)
        try:
            if family == socket.AF_UNIX:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.address)
            else:
                sock = socket.create_connection(self.address, self.timeout)
        except OSError as exc:
            raise RewindError('cannot reach the primary at %s: %s' % (
                self.where, _error_text(exc)))
        if self.tls is None:
            return sock
        settings = self.zrs.section.ssl
        try:
            return self.tls.wrap_socket(
                sock, server_hostname=settings.server_hostname
                or self.address[0])
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise RewindError('TLS with the primary at %s failed: %s' % (
                self.where, _error_text(exc)))

    def probe(self, replica, k):
        """(shared(k), why not) for position `k` of the replica."""
        start = z64 if k == 0 else replica.tids[k - 1]
        sock = self.connect()
        sink = ProbeSink(replica, k)
        receiver = Receiver(sink, start, decoder=self.zrs.decoder())

        def frame_received(payload):
            if not sink.done:
                receiver.frame_received(payload)

        frames = protocol.FrameDecoder(
            frame_received, self.zrs.section.max_message_size)
        received = False
        try:
            sock.sendall(protocol.encode_frame(self.protocol_name)
                         + protocol.encode_frame(start))
            while not sink.done:
                data = self._receive(sock, received)
                if data is None:
                    return False, 'the primary sent nothing after %s for ' \
                        '%gs: it has no later transaction' % (
                            _after(start), self.timeout)
                if not data:
                    if received:
                        raise RewindError(
                            'the primary at %s closed the connection in the '
                            'middle of a transaction' % self.where)
                    return False, 'the primary refused to stream after %s ' \
                        '(closed the connection): not in its history' % (
                            _after(start))
                received = True
                frames.feed(data)
        except protocol.ProtocolError as exc:
            raise RewindError('bad stream from the primary at %s: %s' % (
                self.where, exc))
        except OSError as exc:
            raise RewindError('reading from the primary at %s failed: %s' % (
                self.where, _error_text(exc)))
        finally:
            sock.close()
            sink.close()
        return sink.difference is None, sink.difference

    def _receive(self, sock, received):
        """Data; b'' when closed; None after `timeout` of silence."""
        try:
            return sock.recv(READ_SIZE)
        except (socket.timeout, TimeoutError):
            if received:
                raise RewindError(
                    'the primary at %s stopped sending in the middle of a '
                    'transaction (%gs)' % (self.where, self.timeout))
            return None
        except ConnectionResetError:
            return b''  # an aborted connection: refused


def _after(start):
    return 'the beginning' if start == z64 else start.hex()


def _error_text(exc):
    return str(exc) or type(exc).__name__


def client_tls_context(settings):
    """An `ssl.SSLContext` for a secondary from an `<ssl>` section: our
    certificate and key, the primary verified against `authenticate` (a
    PEM file or a directory of them) and, with check-hostname, its name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = bool(settings.check_hostname)
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        authorities = settings.authenticate
        if authorities and os.path.isdir(authorities):
            for name in sorted(os.listdir(authorities)):
                if name.endswith(PEM_SUFFIXES):
                    context.load_verify_locations(
                        os.path.join(authorities, name))
        elif authorities:
            context.load_verify_locations(authorities)
        context.load_cert_chain(settings.certificate, settings.key,
                                settings.password())
    except (OSError, ssl.SSLError) as exc:
        raise RewindError('<ssl>: cannot load the certificates: %s'
                          % _error_text(exc))
    return context


# -- the search ---------------------------------------------------------------

def shared_prefix(primary, replica):
    """(m, why): the replica's first m transactions are the primary's;
    `why` says how transaction m differs (None when m is all of them)."""
    n = len(replica.tids)
    probes = {}

    def shared(k):
        probes[k] = primary.probe(replica, k)
        return probes[k][0]

    if shared(n - 1):
        return n, None
    low, high = 0, n - 1   # shared(low - 1) (or low = 0), not shared(high)
    while low < high:
        middle = (low + high) // 2
        if shared(middle):
            low = middle + 1
        else:
            high = middle
    why = probes[low][1]
    if low > 0 and why.startswith('the primary refused'):
        # Transaction low-1 is shared, so the primary holds the start tid
        # of this probe: its refusal was not the history guard.
        raise RewindError('the primary at %s closed the connection for a '
                          'start tid it holds (%s): see its log' % (
                              primary.where, replica.tids[low - 1].hex()))
    return low, why


# -- the cut ------------------------------------------------------------------

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


def _short(value):
    text = value.decode('utf-8', 'replace')
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + '...')


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


def rewind(args, out):
    """Run the command; the exit status.  Raises RewindError."""
    try:
        config = zconfig.load(args.config)
    except zconfig.ConfigError as exc:
        raise RewindError(str(exc))
    zrs = choose_section(config, args.name)
    settings = zrs.section.base.config
    path, blob_dir = settings.path, getattr(settings, 'blob_dir', None)
    if not os.path.isfile(path):
        raise RewindError('%s: no such file' % path)
    lock = lock_storage(path)
    if os.path.exists(promotion.record_path(path)):
        out('note: %s records a promotion: zrsd starts this storage as a '
            'primary whatever replicate-from says; remove it to make it a '
            'replica' % promotion.record_path(path))
    try:
        replica = Replica(path, blob_dir)
        m = last_shared(zrs, replica, args.timeout, out)
        if m is None:
            return REWOUND
        if m == 0:
            return NO_COMMON_HISTORY
        end = replica.headers[m - 1].end
        removed = removed_transactions(replica, m)
        if args.dry_run:
            report(replica, m, removed, True, out)
            return REWOUND
        cut(path, end, [name for *_, files in removed for name in files])
        report(replica, m, removed, False, out)
    finally:
        lock.close()
    # FileStorage takes the lock itself; opening rebuilds and saves the
    # index of the shorter file, and proves that the file parses.
    try:
        zrs.open_base().close()
    except zc.lockfile.LockError:
        out('zrsd started meanwhile: it rebuilds the index itself')
    except Exception as exc:
        raise RewindError('the rewound file %s does not open: %s' % (
            path, _error_text(exc)))
    return REWOUND


def last_shared(zrs, replica, timeout, out):
    """How many leading transactions to keep: None when nothing is to be
    removed, 0 when none is shared (reported on stderr)."""
    if not replica.tids:
        out('the replica %s is empty: nothing to rewind' % replica.path)
        return None
    primary = Primary(zrs, replica.blobs is not None, timeout)
    out('<zrs %s> %s: %d transactions, last %s; comparing with the primary '
        'at %s' % (zrs.name, replica.path, len(replica.tids),
                   format_tid(replica.tids[-1]), primary.where))
    m, why = shared_prefix(primary, replica)
    if m == len(replica.tids):
        out('nothing to rewind: the replica %s (%d transactions, last %s) '
            'is a prefix of the history of the primary at %s' % (
                replica.path, m, format_tid(replica.tids[-1]), primary.where))
        return None
    if m == 0:
        print('zrsd-rewind: the replica %s and the primary at %s have no '
              'transaction in common (the replica\'s first transaction %s: '
              '%s); another database? Nothing changed. To replicate from '
              'this primary, remove the file (and its blob directory) and '
              'let zrsd seed it again' % (
                  replica.path, primary.where, format_tid(replica.tids[0]),
                  why), file=sys.stderr)
        return 0
    out('the replica\'s transaction %s is not the primary\'s: %s' % (
        format_tid(replica.tids[m]), why))
    return m


def report(replica, m, removed, dry_run, out):
    """One line per removed transaction, then the totals."""
    for tid, user, description, _ in removed:
        out('%s %s  user %s  description %s' % (
            'would remove' if dry_run else 'removed', format_tid(tid),
            _short(user), _short(description)))
    out('%s %d transactions, %d bytes, %d blob files; %s %s' % (
        'would remove' if dry_run else 'removed', len(removed),
        replica.size - replica.headers[m - 1].end,
        sum(len(files) for *_, files in removed),
        'would rewind to' if dry_run else 'rewound to',
        format_tid(replica.tids[m - 1])))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='zrsd-rewind', usage=USAGE,
        description='Truncate a forked replica (the daemon stopped) after '
                    'the last transaction it shares with its primary '
                    '(replicate-from), so that it can replicate from it '
                    'again. Exit status: 0 rewound or nothing to rewind, 1 '
                    'no transaction in common, 2 error.')
    parser.add_argument('-C', '--configuration', dest='config',
                        required=True, metavar='FILE',
                        help='the zrsd configuration file')
    parser.add_argument('--dry-run', action='store_true',
                        help='print what would be removed; change nothing')
    parser.add_argument('--timeout', type=positive_seconds,
                        default=DEFAULT_TIMEOUT, metavar='SECONDS',
                        help='silence from the primary that means it has '
                             'nothing more (default %(default)s)')
    parser.add_argument('name', nargs='?', metavar='NAME',
                        help='the <zrs NAME> section (default: the only one '
                             'with replicate-from)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return rewind(args, print)
    except RewindError as exc:
        print('zrsd-rewind: %s' % exc, file=sys.stderr)
        return ERROR
    except OSError as exc:  # a local file: permissions, disk, ...
        print('zrsd-rewind: %s' % _error_text(exc), file=sys.stderr)
        return ERROR


if __name__ == '__main__':
    sys.exit(main())
