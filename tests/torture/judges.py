"""The torture's judges: replica against primary (`compare_exact`,
`compare_after_pack`), and the logs (`scan_logs`).  Each returns what it
found rather than asserting, so that one run reports every violation.
"""
import os
import re

import ZODB.blob

from harness.history import (Record, Txn, iter_transactions, load_current,
                             same_after_pack)
from harness.process import LogTail

# ZEO's server logs a client of the torture's that resets its connection.
COMMON_ALLOWED_ERRORS = (
    r'ERROR ZEO\.asyncio\.server Disconnected ConnectionResetError',
)


def differences(p, r):
    """What differs between two transaction tuples (for the report)."""
    out = [name for name, a, b in zip(Txn._fields[:5], p, r) if a != b]
    if len(p[5]) != len(r[5]):
        out.append('%d records vs %d' % (len(p[5]), len(r[5])))
    else:       # the first record that differs
        out += ['record %s: %s' % (a[0].hex(), ','.join(
            n for n, x, y in zip(Record._fields, a, b) if x != y))
            for a, b in zip(p[5], r[5]) if a != b][:1]
    return '; '.join(out)


def is_blob(record):
    return record.data and ZODB.blob.is_blob_record(record.data)


class BlobCheck:
    """Compares the blobs of blob records read with their blob files
    (`iter_transactions(path, blob_dir)`); `compared`: how many."""

    compared = 0

    def check_records(self, label, pairs, strict=True):
        """The problems of the blob records among (primary, replica)
        record `pairs`; not `strict`: a file on the replica only is fine."""
        problems = []
        for p, r in pairs:
            if not is_blob(p):
                continue
            mine, theirs = p.blob, getattr(r, 'blob', None)
            what = '%s: blob file of %s at %s' % (label, p.oid.hex(),
                                                  p.tid.hex())
            if mine is not None and theirs is not None:
                self.compared += 1
                if mine != theirs:
                    problems.append(what + ' differs')
            elif mine is not None:
                problems.append(what + ' missing on the replica')
            elif theirs is not None and strict:
                problems.append(what + ' on the replica only')
        return problems


def compare_exact(primary, replica, prefix=False, replica_path=None):
    """Compare two nodes' files transaction by transaction, blob files
    too (`prefix`: the replica may stop early; `replica_path`: read that
    instead); (transactions, blob files, mismatches)."""
    blobs, mismatches, compared = BlobCheck(), [], 0
    p_iter = iter_transactions(primary.fs_path, primary.blob_dir)
    r_iter = iter_transactions(replica_path or replica.fs_path,
                               replica.blob_dir)
    p, r = next(p_iter, None), next(r_iter, None)
    while (p is not None or r is not None) and not (r is None and prefix):
        if r is None or (p is not None and p[0] < r[0]):
            mismatches.append('%s: transaction %s missing' % (
                replica.name, p[0].hex()))
            p = next(p_iter, None)
        elif p is None or r[0] < p[0]:
            mismatches.append('%s: transaction %s not on the primary' % (
                replica.name, r[0].hex()))
            r = next(r_iter, None)
        else:
            compared += 1
            mismatches.extend(
                blobs.check_records(replica.name, zip(p[5], r[5]))
                if p == r else [
                    '%s: transaction %s differs: %s' % (
                        replica.name, p[0].hex(), differences(p, r))])
            p, r = next(p_iter, None), next(r_iter, None)
    p_iter.close()
    r_iter.close()
    return compared, blobs.compared, mismatches


def compare_after_pack(primary, replica, stop, witness):
    """Judge a replica that replicated across packs, the last stopping at
    `stop`: it has every primary transaction (`same_after_pack`), extra
    ones only up to `stop` and committed by the writer (`witness`, None:
    unknown), a file for each own blob record, and the same current
    objects.  (The replica may receive packed transactions mid-catch-up.)
    (transactions, blob files, mismatches, what the replica holds)."""
    label, mismatches, compared, blobs = replica.name, [], 0, BlobCheck()
    primary_txns = list(iter_transactions(primary.fs_path, primary.blob_dir))
    replica_txns = {t[0]: t for t in iter_transactions(replica.fs_path,
                                                       replica.blob_dir)}
    for p in primary_txns:
        r = replica_txns.get(p[0])
        if r is None:
            mismatches.append('%s: transaction %s missing' % (
                label, p[0].hex()))
            continue
        compared += 1
        if same_after_pack(p, r, stop):
            theirs = {record[:2]: record for record in r[5]}
            mismatches.extend(blobs.check_records(label, (
                (record, theirs.get(record[:2])) for record in p[5]), False))
        else:
            mismatches.append('%s: transaction %s differs (%s the pack '
                              'time): %s' % (
                                  label, p[0].hex(),
                                  'after' if p[0] > stop else 'up to',
                                  differences(p, r)))
    extra = sorted(set(replica_txns) - {t[0] for t in primary_txns})
    for tid in extra:
        if tid > stop:
            mismatches.append('%s: transaction %s after the pack time is '
                              'not on the primary' % (label, tid.hex()))
        elif witness is not None and tid not in witness:
            mismatches.append('%s: transaction %s was never committed by '
                              'the writer' % (label, tid.hex()))
    primary_records = {rec[:2] for t in primary_txns for rec in t[5]}
    # A set: ZEO stores a blob record twice in a transaction at times.
    for oid, rtid in sorted({
            rec[:2] for t in replica_txns.values() for rec in t[5]
            if rec[:2] not in primary_records and is_blob(rec)
            and rec.blob is None}):
        mismatches.append('%s: blob record of %s at %s has no blob file' % (
            label, oid.hex(), rtid.hex()))
    packed_form = sum(1 for t in replica_txns.values() if t[1] == 'p')
    details = ('%s holds %d transactions: %d that the pack removed from the '
               'primary, %d received in packed form' % (
                   label, len(replica_txns), len(extra), packed_form))
    replica_current = load_current(replica.fs_path)
    mismatches.extend(
        '%s: current state of object %s differs' % (label, oid.hex())
        for oid, state in load_current(primary.fs_path).items()
        if replica_current.get(oid) != state)
    return compared, blobs.compared, mismatches, details


def scan_logs(paths, allowed_errors=()):
    """(How many allowed, descriptions of the others) of the ERROR and
    CRITICAL entries and stray tracebacks in the logs at `paths`."""
    allowed = [re.compile(p) for p in
               tuple(allowed_errors) + COMMON_ALLOWED_ERRORS]
    expected, unexpected = 0, []
    for path in paths:
        for record in LogTail(path).poll(final=True):
            entry, first = record.entry, record.line
            if (record.level != '?' and not record.is_error
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
