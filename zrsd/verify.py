"""`zrsd-verify`: check online that a replica holds its primary's history.

Usage: zrsd-verify [options] PRIMARY REPLICA

Both histories are read transaction by transaction, in lockstep, from the
first transaction (or `--start TID`) up to the replica's last transaction,
and the first difference is reported:

- a transaction on one side only (missing on the replica, or on the
  replica only);
- different metadata: status, user, description, extension;
- different records: the records of a transaction are compared one by one,
  in order, on (oid, tid, data, data_txn); the report names the record and
  its oid (for data, the sizes and sha256 digests of both sides).

The replica may legitimately be behind: the primary's transactions after
the replica's last one are counted, not compared, and reported with the
time between the two last transactions.

Packed histories.  FileStorage's pack rewrites the transactions up to the
pack time: status 'p', records no longer current or reachable dropped,
data inline instead of back pointers, transactions left empty dropped;
later transactions are copied unchanged.  A side may hold such
transactions because it was packed, or because it received them from a
packed upstream (after its own unpacked ones).  So the comparison is
local, transaction by transaction, instead of cut at a horizon:

- a transaction where either side has status 'p' must have the same user,
  description and extension on both; for each oid recorded on both sides
  its last record must agree on (tid, data); a packed side may lack
  records the other has, and when only one side is packed, that side may
  not have records the other lacks (a pack only drops records);
- a transaction on one side only is accepted when the side lacking it is
  packed there: its transaction just before or just after has status 'p'
  (the same rule as the primary's history guard); it is counted;
- everywhere else the records are compared strictly, except that a record
  may hold its data inline on one side where the other points back to a
  transaction that lies in the first side's packed part;
- as soon as either side shows a packed part, `--objects` is turned on
  (and the output says so), since history alone no longer proves the
  current state: an object may then be absent on a packed side only (a
  pack's garbage collection), which is counted, not a divergence.

Comparing a packed transaction holds the sha256 digests of its records
(one per oid per side) in memory, not their data.

Each side is a ZEO server or a FileStorage file:

- `fs:PATH` is a FileStorage file, `zeo:ADDRESS` a ZEO server;
- without a prefix, an argument ending in `.fs` is a file, anything else a
  ZEO address: `host:port`, `[ipv6]:port`, `port` (on 127.0.0.1) or a unix
  socket path.

Files are opened read-only (FileStorage takes no lock then), so a file may
be checked while a server has it open; it is read as it was when opened.
ZEO servers are asked through a read-only ZEO client and ZEO's server-side
transaction iterator.  Neither server has to stop.

`--objects` also loads every object that exists on either side, as of the
replica's last transaction, from both sides and compares data and serial:
this reads each storage through its index (its load path) rather than by
scanning history.  Objects are enumerated with `record_iternext` on both
sides, merged in oid order; memory stays bounded.

Exit status: 0 the histories agree, 1 they diverge, 2 usage error or a
server or file that cannot be reached or read.

Memory stays bounded: each history is streamed by a reader thread at most
`READ_AHEAD` transactions or records ahead of the comparison, which holds
one record of each side at a time and accumulates nothing but counters.
(The threads read both sides at once: over ZEO each transaction and each
record is a round trip.)
"""
import argparse
import contextlib
import hashlib
import heapq
import itertools
import logging
import os
import queue
import socket
import sys
import threading
import traceback

import ZEO
import ZODB.FileStorage
from ZEO.Exceptions import ClientDisconnected, ServerException
from ZODB.POSException import POSError, POSKeyError
from ZODB.utils import p64, u64, z64

from .options import positive_seconds
from .sockets import parse_address
from .tids import format_tid, tid_time

AGREE, DIVERGE, ERROR = 0, 1, 2

DEFAULT_TIMEOUT = 30.0

USAGE = 'zrsd-verify [options] PRIMARY REPLICA'

# Longest rendering of a differing metadata value in a report.
MAX_SHOWN = 200


class VerifyError(Exception):
    """A side cannot be opened or read: exit status 2."""


# -- the two sides ------------------------------------------------------------

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
    snapshot the comparison stops at.
    """

    def __init__(self, role, text, kind, storage):
        self.role = role
        self.text = text
        self.kind = kind
        self.storage = storage
        self.last_tid = storage.lastTransaction()

    @property
    def name(self):
        """'the primary at HOST:PORT', 'the replica file PATH'."""
        return 'the %s %s %s' % (
            self.role, 'file' if self.kind == 'file' else 'at', self.text)

    def close(self):
        self.storage.close()


def open_source(role, text, storage_name='1', timeout=DEFAULT_TIMEOUT):
    """Open the `role` ('primary' or 'replica') side named by `text`."""
    try:
        kind, where = parse_source(text)
    except ValueError as exc:
        raise VerifyError('bad %s %r: %s' % (role, text, exc))
    if kind == 'file':
        if not os.path.isfile(where):
            raise VerifyError('%s file %s: no such file' % (role, where))
        try:
            storage = ZODB.FileStorage.FileStorage(where, read_only=True)
        except Exception as exc:
            raise VerifyError('cannot open the %s file %s: %s' % (
                role, where, _exc_text(exc)))
    else:
        try:
            storage = ZEO.client(where, storage=storage_name, read_only=True,
                                 wait_timeout=timeout)
        except ClientDisconnected as exc:
            raise VerifyError(
                'cannot reach the %s at %s (ZEO storage %r): %s' % (
                    role, text, storage_name, exc))
        except Exception as exc:
            raise VerifyError('cannot open a ZEO client of the %s at %s: %s'
                              % (role, text, _exc_text(exc)))
    try:
        return Source(role, text, kind, storage)
    except Exception:
        storage.close()
        raise


def _exc_text(exc):
    return '%s: %s' % (type(exc).__name__, exc) if str(exc) \
        else type(exc).__name__


# -- rendering ----------------------------------------------------------------

def format_oid(oid):
    return '0x%016x' % u64(oid)


def _shown(value):
    text = repr(value)
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + '...'
    return text


def _describe_data(data):
    return _describe_digest(_digest(data))


def _describe_digest(digest):
    if digest is None:
        return 'no data (an undone creation)'
    size, sha256 = digest
    return '%d bytes sha256 %s' % (size, sha256[:16])


# -- history ------------------------------------------------------------------

# What reading a side may raise when the side (not this program) fails.
READ_ERRORS = (ClientDisconnected, ServerException, POSError, OSError)

# Items a reader may hold ahead of the comparison (transactions and
# records): the bound on memory, with the largest record.
READ_AHEAD = 256


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
                    self.source.name, _exc_text(value)))
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


class HistoryReport:
    """What comparing two histories found (a plain record).

    `compared` transactions agreed, from `first_tid` to `last_tid`;
    `behind` primary transactions come after the replica's last one, the
    newest being `primary_last`.  `divergence` is None, or (tid, what).
    `max_oid` is the highest oid in either history up to the replica's
    last transaction, when the comparison began at the first transaction
    (else None).  `packed` says which sides (primary, replica) showed a
    packed part; `packed_compared` of the agreeing transactions were
    compared as packed ones; `one_sided` transactions were found on one
    side only, in the other side's packed part.
    """

    def __init__(self):
        self.compared = 0
        self.first_tid = None
        self.last_tid = None
        self.behind = 0
        self.primary_last = None
        self.divergence = None
        self.max_oid = None
        self.packed = [False, False]
        self.packed_compared = 0
        self.one_sided = 0

    def agreed(self, tid):
        self.compared += 1
        if self.first_tid is None:
            self.first_tid = tid
        self.last_tid = tid


def compare_histories(primary, replica, start=None):
    """Compare two `Source`s' histories in lockstep; a `HistoryReport`.

    Stops at the replica's snapshot (`replica.last_tid`); the primary is
    read up to its own snapshot, to count what the replica lacks.
    """
    readers = [HistoryReader(primary, start, primary.last_tid,
                             replica.last_tid),
               HistoryReader(replica, start, replica.last_tid,
                             replica.last_tid)]
    try:
        report = _compare(*readers)
    finally:
        for reader in readers:
            reader.close()
    if start is None:
        report.max_oid = max((reader.max_oid for reader in readers
                              if reader.max_oid is not None), default=None)
    return report


PACKED = 'p'  # the status FileStorage's pack gives the transactions it kept

PRIMARY, REPLICA = 0, 1


class PackedParts:
    """What the comparison knows so far of each side's packed part.

    Sides are PRIMARY and REPLICA.  `previous[side]` is the status of the
    side's transaction read last; `through[side]` the newest tid known to
    lie in its packed part: a transaction of status 'p', or one it lacks
    next to such a transaction.
    """

    def __init__(self):
        self.previous = [None, None]
        self.through = [z64, z64]

    def read(self, side, txn):
        """Side `side`'s next transaction is `txn`."""
        self.previous[side] = txn.status
        if txn.status == PACKED:
            self.through[side] = max(self.through[side], txn.tid)

    def may_lack(self, side, tid, following):
        """May `side` lack transaction `tid` (the other side has it)?

        Yes when a pack went by there: the side's transaction before
        `tid`, or `following` (the one after it, None at the end), has
        status 'p'.
        """
        if PACKED in (self.previous[side],
                      following.status if following is not None else None):
            self.through[side] = max(self.through[side], tid)
            return True
        return False


def _compare(primary, replica):
    report = HistoryReport()
    packed = PackedParts()
    p, r = primary.next_transaction(), replica.next_transaction()
    while r is not None:
        if p is None or p.tid > r.tid:
            if not packed.may_lack(PRIMARY, r.tid, p):
                report.divergence = (
                    r.tid, 'transaction on the replica only%s' % (
                        '' if p is None else '; the next primary '
                        'transaction is %s' % format_tid(p.tid)))
                return report
            report.one_sided += 1
            packed.read(REPLICA, r)
            r = replica.next_transaction()
            continue
        if p.tid < r.tid:
            if not packed.may_lack(REPLICA, p.tid, r):
                report.divergence = (
                    p.tid, 'transaction missing on the replica; the next '
                    'replica transaction is %s' % format_tid(r.tid))
                return report
            report.one_sided += 1
            packed.read(PRIMARY, p)
            p = primary.next_transaction()
            continue
        packed.read(PRIMARY, p)
        packed.read(REPLICA, r)
        difference = compare_metadata(p, r)
        if difference is None and PACKED in (p.status, r.status):
            difference = compare_packed_records(
                primary.records(), replica.records(),
                p.status == PACKED, r.status == PACKED)
            report.packed_compared += 1
        elif difference is None:
            difference = compare_records(primary.records(),
                                         replica.records(), packed.through)
        if difference:
            report.divergence = (p.tid, difference)
            return report
        report.agreed(p.tid)
        p, r = primary.next_transaction(), replica.next_transaction()
    report.packed = [through != z64 for through in packed.through]
    # The replica ends here: what the primary has beyond it is lag.
    while p is not None:
        report.behind += 1
        report.primary_last = p.tid
        p = primary.next_transaction()
    return report


def compare_metadata(p, r):
    """None if transactions `p` and `r` (same tid) have the same metadata,
    else what differs.  The status may differ when one of them is 'p'."""
    names = ('user', 'description', 'extension')
    if PACKED not in (p.status, r.status):
        names = ('status',) + names
    for name in names:
        p_value, r_value = getattr(p, name), getattr(r, name)
        if p_value != r_value:
            return '%s differs: primary %s, replica %s' % (
                name, _shown(p_value), _shown(r_value))
    return None


def compare_records(p_records, r_records, packed_through=(z64, z64)):
    """None if two transactions' records agree, else what differs.

    The records are compared a pair at a time, in order: a transaction's
    records are never all held in memory.  `packed_through`: see
    `compare_record`.
    """
    pairs = itertools.zip_longest(p_records, r_records)
    for index, (p_rec, r_rec) in enumerate(pairs):
        difference = compare_record(p_rec, r_rec, packed_through)
        if difference:
            return 'record %d: %s' % (index, difference)
    return None


def compare_record(p, r, packed_through=(z64, z64)):
    """None if records `p` and `r`, (oid, tid, data, data_txn) tuples,
    agree, else what differs.

    `packed_through` holds, per side, the newest tid of its packed part:
    a side may hold the data inline (data_txn None) where the other side
    points back to a transaction up to that tid (FileStorage's `restore`
    stores the data when the transaction pointed to was packed away).
    """
    if r is None:
        return 'oid %s missing on the replica' % format_oid(p[0])
    if p is None:
        return 'oid %s on the replica only' % format_oid(r[0])
    (p_oid, p_tid, p_data, p_data_txn), (r_oid, r_tid, r_data, r_data_txn) \
        = p, r
    if p_oid != r_oid:
        return 'oid %s on the primary, oid %s on the replica' % (
            format_oid(p_oid), format_oid(r_oid))
    oid = format_oid(p_oid)
    if p_tid != r_tid:
        return 'oid %s: record tid %s on the primary, %s on the replica' % (
            oid, p_tid.hex(), r_tid.hex())
    if p_data != r_data:
        return 'oid %s: data differ: primary %s, replica %s' % (
            oid, _describe_data(p_data), _describe_data(r_data))
    if p_data_txn != r_data_txn and not (
            p_data_txn is None and r_data_txn <= packed_through[PRIMARY]
            or r_data_txn is None
            and p_data_txn <= packed_through[REPLICA]):
        return 'oid %s: data_txn differs: primary %s, replica %s' % (
            oid, _tid_or_none(p_data_txn), _tid_or_none(r_data_txn))
    return None


def _last_records(records):
    """{oid: (tid, data digest)} of the last record of each oid."""
    return {oid: (tid, _digest(data)) for oid, tid, data, _ in records}


def _digest(data):
    return None if data is None else (len(data),
                                      hashlib.sha256(data).hexdigest())


def compare_packed_records(p_records, r_records, p_packed, r_packed):
    """None if the records of a transaction packed on one side or both
    agree, else what differs.

    The last record of each oid recorded on both sides must agree on
    (tid, data); a side that is packed may lack records, a side that is
    not packed may not.  (A pack keeps, of each oid, the record that was
    current at the pack time, if any: the transaction's last one.)
    """
    p_last, r_last = _last_records(p_records), _last_records(r_records)
    for oid in sorted(p_last.keys() & r_last.keys()):
        (p_tid, p_digest), (r_tid, r_digest) = p_last[oid], r_last[oid]
        if p_tid != r_tid:
            return ('oid %s: record tid %s on the primary, %s on the '
                    'replica' % (format_oid(oid), p_tid.hex(), r_tid.hex()))
        if p_digest != r_digest:
            return 'oid %s: data differ: primary %s, replica %s' % (
                format_oid(oid), _describe_digest(p_digest),
                _describe_digest(r_digest))
    if not p_packed:
        only = sorted(r_last.keys() - p_last.keys())
        if only:
            return ('oid %s on the replica only, in a transaction packed '
                    'there only' % format_oid(only[0]))
    if not r_packed:
        only = sorted(p_last.keys() - r_last.keys())
        if only:
            return ('oid %s on the primary only, in a transaction packed '
                    'there only' % format_oid(only[0]))
    return None


def _tid_or_none(tid):
    return 'none' if tid is None else tid.hex()


# -- objects ------------------------------------------------------------------

@contextlib.contextmanager
def reading(source, what):
    """Turn a failure to read `source` into a VerifyError naming it."""
    try:
        yield
    except READ_ERRORS as exc:
        raise VerifyError('%s %s failed: %s' % (
            what, source.name, _exc_text(exc)))


def iter_oids(source, last=None):
    """The oids in the index of `source`'s storage, ascending, up to `last`
    (None: all).

    It asks `record_iternext`, which loads each current record and raises
    POSKeyError (naming the oid) for an object whose creation was undone;
    the enumeration goes on after that oid.  Past the highest oid, the
    storage raises ValueError (which a ZEO server logs as an ERROR with a
    traceback): knowing `last` avoids asking.
    """
    next_oid = None
    with reading(source, 'listing the objects of'):
        while True:
            try:
                oid, _, _, next_oid = source.storage.record_iternext(
                    next_oid)
            except POSKeyError as exc:
                oid = exc.args[0]
                next_oid = p64(u64(oid) + 1)
            except (ValueError, ServerException) as exc:
                if _is_value_error(exc):
                    return  # nothing at or after next_oid ("empty tree")
                raise
            if last is not None and oid > last:
                return
            yield oid
            if next_oid is None or (last is not None and oid >= last):
                return


def _is_value_error(exc):
    # ZEO's client re-raises only some server exceptions as themselves;
    # a ValueError arrives as ServerException('builtins.ValueError', args).
    return isinstance(exc, ValueError) or (
        isinstance(exc, ServerException)
        and exc.args[:1] == ('builtins.ValueError',))


def _unique(oids):
    previous = None
    for oid in oids:
        if oid != previous:
            yield oid
            previous = oid


def state_before(source, oid, before):
    """(serial, data) of `oid` as of just before tid `before`; None when it
    did not exist then (or its creation was undone)."""
    with reading(source, 'loading an object from'):
        try:
            loaded = source.storage.loadBefore(oid, before)
        except POSKeyError:
            return None
    if loaded is None:
        return None
    data, serial, _ = loaded
    return serial, data


def _describe_state(state):
    if state is None:
        return 'absent'
    serial, data = state
    return 'serial %s, %s' % (serial.hex(), _describe_data(data))


class ObjectsReport:
    """What comparing the objects found (a plain record).

    `agreed` objects loaded the same from both sides; `collected` were
    absent on a packed side only (see `compare_objects`); `difference` is
    None or (oid, what differs).
    """

    def __init__(self):
        self.agreed = 0
        self.collected = 0
        self.difference = None


def compare_objects(primary, replica, tid, max_oid=None,
                    packed=(False, False)):
    """Load every object of either side as of `tid` from both sides; an
    `ObjectsReport`.

    The oids of both indexes are merged in order, so an object missing on
    one side is found too.  `max_oid`, the highest oid in the history up to
    `tid` if known, ends the enumeration there: objects created later do
    not exist as of `tid` on either side.  `packed` says which sides
    (primary, replica) were packed: FileStorage's pack removes the objects
    that were unreachable at the pack time (garbage collection), so an
    object absent on a packed side only is counted as collected, not as a
    difference.
    """
    before = p64(u64(tid) + 1)
    oids = _unique(heapq.merge(iter_oids(primary, max_oid),
                               iter_oids(replica, max_oid)))
    report = ObjectsReport()
    for oid in oids:
        p_state = state_before(primary, oid, before)
        r_state = state_before(replica, oid, before)
        if p_state == r_state:
            if p_state is not None:
                report.agreed += 1
        elif (p_state is None and packed[PRIMARY]
              or r_state is None and packed[REPLICA]):
            report.collected += 1
        else:
            report.difference = (oid, 'primary %s; replica %s' % (
                _describe_state(p_state), _describe_state(r_state)))
            return report
    return report


# -- the command --------------------------------------------------------------

def _tid_argument(text):
    digits = text[2:] if text.lower().startswith('0x') else text
    try:
        tid = bytes.fromhex(digits)
    except ValueError:
        tid = b''
    if len(tid) != 8:
        raise argparse.ArgumentTypeError(
            'not a tid (16 hex digits): %r' % text)
    return tid


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='zrsd-verify', usage=USAGE,
        description='Compare a ZODB replica with its primary, transaction '
                    'by transaction, up to the replica\'s last transaction, '
                    'while both run. Exit status: 0 they agree, 1 they '
                    'diverge, 2 usage error or unreachable server.',
        epilog='PRIMARY and REPLICA: fs:PATH is a FileStorage file (opened '
               'read-only), zeo:ADDRESS a ZEO server; without a prefix a '
               'name ending in .fs is a file, anything else a ZEO address '
               '(host:port, [ipv6]:port, port on 127.0.0.1, or a unix '
               'socket path).')
    parser.add_argument('primary', metavar='PRIMARY',
                        help='the primary: ZEO address or FileStorage file')
    parser.add_argument('replica', metavar='REPLICA',
                        help='the replica: ZEO address or FileStorage file')
    parser.add_argument('--start', type=_tid_argument, metavar='TID',
                        help='begin at this tid (16 hex digits, 0x '
                             'optional), or the first one after it, instead '
                             'of the first transaction')
    parser.add_argument('--objects', action='store_true',
                        help='also load every object from both sides, as '
                             'of the replica\'s last transaction, and '
                             'compare them (on by itself when either '
                             'history was packed)')
    parser.add_argument('--storage', default='1', metavar='NAME',
                        help='ZEO storage name on both servers (default '
                             '%(default)s)')
    parser.add_argument('-t', '--timeout', type=positive_seconds,
                        default=DEFAULT_TIMEOUT, metavar='SECONDS',
                        help='give up on a ZEO server that cannot be '
                             'reached within this time (default '
                             '%(default)s)')
    parser.add_argument('-q', '--quiet', action='store_true',
                        help='print nothing when the histories agree')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='log (ZEO client, FileStorage) to stderr')
    return parser.parse_args(argv)


def _setup_logging(verbose):
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format='%(asctime)s %(levelname)s %(name)s %(message)s')
    else:
        # The ZEO client logs its reconnection attempts: keep them (and
        # logging's last-resort handler) off the command's output.
        root.addHandler(logging.NullHandler())


def _report_history(report, primary, replica, out):
    """Lines describing a history comparison that found no divergence."""
    if report.compared:
        out('OK: %d transactions agree, %s to %s' % (
            report.compared, format_tid(report.first_tid),
            format_tid(report.last_tid)))
    else:
        out('OK: no transactions to compare')
    if any(report.packed):
        out('packed history on the %s: %d transactions compared as packed,'
            ' %d found on one side only' % (
                ' and the '.join(role for role, packed in zip(
                    ('primary', 'replica'), report.packed) if packed),
                report.packed_compared, report.one_sided))
    if not report.behind:
        out('replica up to date with the primary')
        return
    replica_last = report.last_tid or (
        replica.last_tid if replica.last_tid != z64 else None)
    if replica_last is None:
        out('replica behind the primary by %d transactions (the replica '
            'is empty); primary last transaction %s' % (
                report.behind, format_tid(report.primary_last)))
    else:
        out('replica behind the primary by %d transactions, %.3f seconds; '
            'primary last transaction %s' % (
                report.behind,
                tid_time(report.primary_last) - tid_time(replica_last),
                format_tid(report.primary_last)))


def verify(args, out):
    """Run the comparison; the exit status.  Raises VerifyError."""
    # The replica first: its snapshot must not be newer than the primary's.
    replica = open_source('replica', args.replica, args.storage,
                          args.timeout)
    try:
        primary = open_source('primary', args.primary, args.storage,
                              args.timeout)
        try:
            return _verify(args, primary, replica, out)
        finally:
            primary.close()
    finally:
        replica.close()


def _verify(args, primary, replica, out):
    report = compare_histories(primary, replica, args.start)
    if report.divergence:
        tid, what = report.divergence
        print('DIVERGED at transaction %s: %s' % (format_tid(tid), what))
        out('%d transactions agreed before it' % report.compared)
        return DIVERGE
    _report_history(report, primary, replica, out)
    objects = args.objects
    if any(report.packed) and not objects:
        # History alone no longer proves the current state.
        out('comparing every object too (--objects), as history was packed')
        objects = True
    if objects:
        at = report.last_tid or replica.last_tid
        if at == z64:
            out('OK: no objects to compare (the replica is empty)')
            return AGREE
        found = compare_objects(primary, replica, at, report.max_oid,
                                report.packed)
        if found.difference:
            oid, what = found.difference
            print('DIVERGED: object %s as of %s: %s' % (
                format_oid(oid), format_tid(at), what))
            out('%d objects agreed before it' % found.agreed)
            return DIVERGE
        out('OK: %d objects agree as of %s%s' % (
            found.agreed, format_tid(at),
            '; %d absent on a packed side only (garbage-collected by its '
            'pack)' % found.collected if found.collected else ''))
    return AGREE


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging(args.verbose)
    out = (lambda line: None) if args.quiet else print
    try:
        return verify(args, out)
    except VerifyError as exc:
        print('zrsd-verify: %s' % exc, file=sys.stderr)
        return ERROR
    except Exception:
        # Exit status 1 would read as "diverged": an unexpected failure
        # means "could not verify".
        traceback.print_exc()
        return ERROR


if __name__ == '__main__':
    sys.exit(main())
