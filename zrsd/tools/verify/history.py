"""Comparing two histories for `zrsd-verify`, transaction by transaction.

`compare_histories` reads both sides in lockstep (through a
`HistoryReader` each) up to the replica's snapshot and returns a
`HistoryReport`: metadata and records are compared one pair at a time,
with the pack rules of the package's docstring (`PackedParts` tracks
where each side's packed part lies).  Also the rendering of oids, values
and data in the report's lines.
"""
import hashlib
import itertools

from ZODB.utils import u64, z64

from zrsd.tids import format_tid
from .sides import HistoryReader

# Longest rendering of a differing metadata value in a report.
MAX_SHOWN = 200

PACKED = 'p'  # the status FileStorage's pack gives the transactions it kept

PRIMARY, REPLICA = 0, 1


# -- rendering ----------------------------------------------------------------

def format_oid(oid):
    return '0x%016x' % u64(oid)


def _shown(value):
    text = repr(value)
    if len(text) > MAX_SHOWN:
        text = text[:MAX_SHOWN] + '...'
    return text


def describe_data(data):
    """'N bytes sha256 PREFIX' of a record's data (None: no data)."""
    return describe_digest(_digest(data))


def describe_digest(digest):
    """`describe_data` from (size, sha256 hex digest) or None."""
    if digest is None:
        return 'no data (an undone creation)'
    size, sha256 = digest
    return '%d bytes sha256 %s' % (size, sha256[:16])


# -- history ------------------------------------------------------------------

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


def compare_histories(primary, replica, start=None, blobs=None):
    """Compare two `Source`s' histories in lockstep; a `HistoryReport`.

    Stops at the replica's snapshot (`replica.last_tid`); the primary is
    read up to its own snapshot, to count what the replica lacks.
    `blobs(oid, tid, data)` (a `blobs.BlobComparison`) also compares the
    blob files of the records that agree.
    """
    readers = [HistoryReader(primary, start, primary.last_tid,
                             replica.last_tid),
               HistoryReader(replica, start, replica.last_tid,
                             replica.last_tid)]
    try:
        report = _compare(*readers, blobs=blobs)
    finally:
        for reader in readers:
            reader.close()
    if start is None:
        report.max_oid = max((reader.max_oid for reader in readers
                              if reader.max_oid is not None), default=None)
    return report


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


def _compare(primary, replica, blobs=None):
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
                                         replica.records(), packed.through,
                                         blobs)
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


def compare_records(p_records, r_records, packed_through=(z64, z64),
                    blobs=None):
    """None if two transactions' records agree, else what differs.

    The records are compared a pair at a time, in order: a transaction's
    records are never all held in memory.  `packed_through`: see
    `compare_record`; `blobs`: see `compare_histories`.
    """
    pairs = itertools.zip_longest(p_records, r_records)
    for index, (p_rec, r_rec) in enumerate(pairs):
        difference = compare_record(p_rec, r_rec, packed_through)
        if difference is None and blobs is not None:
            blob = blobs(*p_rec[:3])
            if blob:
                difference = 'oid %s: %s' % (format_oid(p_rec[0]), blob)
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
            oid, describe_data(p_data), describe_data(r_data))
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
                format_oid(oid), describe_digest(p_digest),
                describe_digest(r_digest))
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
