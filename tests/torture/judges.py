"""The torture's judges: replica against primary, and the logs.

`compare_exact` compares two nodes' files transaction by transaction:
tid, status, user, description, extension, and each record's oid, tid,
data and data_txn; for every blob record, the blob files (present on both
sides, same bytes).  `compare_after_pack` judges a replica that
replicated across packs of its primary (see its docstring).  `scan_logs`
finds every ERROR or CRITICAL entry, and every traceback, that a
scenario does not cause on purpose.  Each judge returns what it found
rather than asserting, so that one run reports every violation.
"""
import filecmp
import os
import re

import ZODB.blob

from harness.history import iter_transactions, load_current, same_after_pack

LOG_LINE = re.compile(
    r'^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(,\d+)? (?P<level>[A-Z]+) ')

# ERROR entries that the torture's own ZEO clients cause anywhere: ZEO's
# server logs a client that closes its connection with a reset as an
# error (the pack client, the clients that wait for the replicas).
COMMON_ALLOWED_ERRORS = (
    r'ERROR ZEO\.asyncio\.server Disconnected ConnectionResetError',
)


def differences(p, r):
    """What differs between two transaction tuples (for the report)."""
    names = ('tid', 'status', 'user', 'description', 'extension')
    out = [name for name, a, b in zip(names, p, r) if a != b]
    precs, rrecs = p[5], r[5]
    if len(precs) != len(rrecs):
        out.append('%d records vs %d' % (len(precs), len(rrecs)))
    else:
        for a, b in zip(precs, rrecs):
            if a != b:
                fields = [n for n, x, y in zip(
                    ('oid', 'tid', 'data', 'data_txn'), a, b) if x != y]
                out.append('record %s: %s' % (a[0].hex(), ','.join(fields)))
                break
    return '; '.join(out)


class BlobCheck:
    """Compares the blob files of blob records on both sides."""

    def __init__(self, primary_dir, replica_dir):
        self.primary = ZODB.blob.FilesystemHelper(primary_dir)
        self.replica = ZODB.blob.FilesystemHelper(replica_dir)
        self.compared = 0

    def check(self, oid, tid, data, strict=True):
        """None, or what is wrong with the blob files of (oid, tid).
        Not `strict`: a blob file on the replica only is fine."""
        if not data or not ZODB.blob.is_blob_record(data):
            return None
        p = self.primary.getBlobFilename(oid, tid)
        r = self.replica.getBlobFilename(oid, tid)
        p_exists, r_exists = os.path.exists(p), os.path.exists(r)
        if p_exists and not r_exists:
            return 'blob file of %s at %s missing on the replica' % (
                oid.hex(), tid.hex())
        if r_exists and not p_exists:
            return ('blob file of %s at %s on the replica only' % (
                oid.hex(), tid.hex())) if strict else None
        if p_exists:
            self.compared += 1
            if not filecmp.cmp(p, r, shallow=False):
                return 'blob file of %s at %s differs' % (oid.hex(),
                                                          tid.hex())
        return None

    def check_records(self, label, records, strict=True):
        """The problems of the blob records among `records`."""
        return ['%s: %s' % (label, problem) for problem in (
            self.check(oid, tid, data, strict)
            for oid, tid, data, _ in records) if problem]


def compare_exact(primary, replica, prefix=False, replica_path=None):
    """Compare two nodes' files (streamed: they may be large); returns
    (transactions compared, blob files compared, mismatches).

    With `prefix`, the replica may stop early: the primary's transactions
    after the replica's last one are not missing.  `replica_path` reads
    another file than the replica's (a copy).
    """
    blobs = BlobCheck(primary.blob_dir, replica.blob_dir)
    mismatches = []
    compared = 0
    label = replica.name
    p_iter = iter_transactions(primary.fs_path)
    r_iter = iter_transactions(replica_path or replica.fs_path)
    p, r = next(p_iter, None), next(r_iter, None)
    while p is not None or r is not None:
        if r is None and prefix:
            break
        if r is None or (p is not None and p[0] < r[0]):
            mismatches.append('%s: transaction %s missing' % (
                label, p[0].hex()))
            p = next(p_iter, None)
        elif p is None or r[0] < p[0]:
            mismatches.append('%s: transaction %s not on the primary' % (
                label, r[0].hex()))
            r = next(r_iter, None)
        else:
            compared += 1
            if p != r:
                mismatches.append('%s: transaction %s differs: %s' % (
                    label, p[0].hex(), differences(p, r)))
            else:
                mismatches.extend(blobs.check_records(label, p[5]))
            p, r = next(p_iter, None), next(r_iter, None)
    p_iter.close()
    r_iter.close()
    return compared, blobs.compared, mismatches


def compare_after_pack(primary, replica, stop, witness):
    """Judge a replica that replicated across packs of its primary.

    A pack at time T rewrites the primary's history up to T and copies
    what follows (see `harness.history.same_after_pack`); a replica is never
    packed: it keeps what it received before the pack and receives the
    rest as the primary has it when it asks.  So with `stop` the newest
    pack's stop tid:

    - the replica has exactly the primary's transactions after `stop`,
      and every transaction of the primary, each agreeing by
      `same_after_pack`;
    - it holds no transaction the writer did not commit: its extra
      transactions up to `stop` are ones the pack removed, and `witness`
      (the tids the writer may have committed; None: unknown) says so;
    - every object in the primary's index loads the same data and serial
      from it, and every blob file of the primary is on it, same bytes;
    - every blob record it holds has its blob file (one the pack removed
      from the primary included: it received that record whole before
      the pack, or not at all).

    Comparing the replica with a copy of the primary taken just before
    the pack would be simpler but is not sound: the replica may be
    mid-catch-up when the pack runs and legitimately receive packed
    transactions.  These rules accept exactly what a correct replica may
    hold.  Returns (transactions compared, blob files compared,
    mismatches, a line about what the replica holds).
    """
    label = replica.name
    mismatches = []
    blobs = BlobCheck(primary.blob_dir, replica.blob_dir)
    primary_txns = list(iter_transactions(primary.fs_path))
    replica_txns = {t[0]: t for t in iter_transactions(replica.fs_path)}
    primary_tids = {t[0] for t in primary_txns}
    compared = 0
    for p in primary_txns:
        r = replica_txns.get(p[0])
        if r is None:
            mismatches.append('%s: transaction %s missing' % (
                label, p[0].hex()))
            continue
        compared += 1
        if same_after_pack(p, r, stop):
            mismatches.extend(blobs.check_records(label, p[5], False))
        else:
            mismatches.append('%s: transaction %s differs (%s the pack '
                              'time): %s' % (
                                  label, p[0].hex(),
                                  'after' if p[0] > stop else 'up to',
                                  differences(p, r)))
    for tid in sorted(set(replica_txns) - primary_tids):
        if tid > stop:
            mismatches.append('%s: transaction %s after the pack time is '
                              'not on the primary' % (label, tid.hex()))
        elif witness is not None and tid not in witness:
            mismatches.append('%s: transaction %s was never committed by '
                              'the writer' % (label, tid.hex()))
    # A record the primary still has is compared above; one the pack
    # removed must still be whole on the replica: its blob file too.
    primary_records = {(rec[0], rec[1]) for t in primary_txns
                       for rec in t[5]}
    # (A transaction may hold two records of one oid: ZEO stores a blob
    # record twice at times.)
    for oid, rtid in sorted({
            (oid, rtid) for t in replica_txns.values()
            for oid, rtid, data, _ in t[5]
            if (oid, rtid) not in primary_records
            and data and ZODB.blob.is_blob_record(data)}):
        if not os.path.exists(blobs.replica.getBlobFilename(oid, rtid)):
            mismatches.append(
                '%s: blob record of %s at %s has no blob file' % (
                    label, oid.hex(), rtid.hex()))
    extra = len(set(replica_txns) - primary_tids)
    packed_form = sum(1 for t in replica_txns.values() if t[1] == 'p')
    details = ('%s holds %d transactions: %d that the pack removed from the '
               'primary, %d received in packed form' % (
                   label, len(replica_txns), extra, packed_form))
    replica_current = load_current(replica.fs_path)
    for oid, state in load_current(primary.fs_path).items():
        if replica_current.get(oid) != state:
            mismatches.append('%s: current state of object %s differs' % (
                label, oid.hex()))
    return compared, blobs.compared, mismatches, details


def log_entries(path):
    """The entries of a zrsd log: each log line with the lines that
    follow it up to the next log line (a traceback, say)."""
    with open(path, 'rb') as f:
        lines = f.read().decode('utf-8', 'replace').splitlines()
    entry = []
    for line in lines:
        if LOG_LINE.match(line) and entry:
            yield '\n'.join(entry)
            entry = []
        entry.append(line)
    if entry:
        yield '\n'.join(entry)


def scan_logs(paths, allowed_errors=()):
    """Every ERROR/CRITICAL entry (the line and its traceback) and every
    stray traceback in the logs at `paths`, but those matching a regex of
    `allowed_errors` or `COMMON_ALLOWED_ERRORS` (caused on purpose).
    Returns (how many were allowed, descriptions of the others)."""
    allowed = [re.compile(p) for p in
               tuple(allowed_errors) + COMMON_ALLOWED_ERRORS]
    expected, unexpected = 0, []
    for path in paths:
        for entry in log_entries(path):
            first = entry.splitlines()[0]
            match = LOG_LINE.match(first)
            if (match and match.group('level') not in ('ERROR', 'CRITICAL')
                    and 'Traceback' not in entry):
                continue
            if any(a.search(entry) for a in allowed):
                expected += 1
                continue
            last = entry.strip().splitlines()[-1]
            unexpected.append('%s: %s%s' % (
                os.path.basename(path), first.strip(),
                (' ... ' + last.strip()) if last != first else ''))
    return expected, unexpected
