"""What counts as a violation: each outcome (an ERROR line or none, the
position a replica resumes from, the history it holds, files left behind)
judged against what a correct replica does, and recorded in the `Summary`.
"""
import os
import re

import ZODB.FileStorage
from ZODB.POSException import POSKeyError

from harness.history import copy_transaction

from .results import LaneAbort

MAX_ERROR_LINE = 2000               # a "clear" ERROR line is shorter


def judge(summary, side, case, error_text, line=None):
    """Check one connection's outcome against the case's expectation.

    `error_text` is the rejection reason (None: the stream just ended);
    `line` the whole ERROR line (its length is checked).
    """
    if error_text is None:
        summary.add(side, 'closed')
        if case.expect == 'reject':
            summary.violation('log', side, 'a must-reject case ended '
                              'without an ERROR', case)
        return
    summary.add(side, 'rejected')
    summary.reason(side, error_text)
    line = line or error_text
    if len(line) > MAX_ERROR_LINE:
        summary.violation('log', side, 'ERROR line of %d characters: %s...'
                          % (len(line), line[:300]), case)
    if case.expect == 'close':
        summary.violation('log', side, 'ERROR for a stream that just ended: '
                          '%s' % line[:500], case)
    elif case.reason and case.reason not in error_text:
        summary.violation('log', side, 'ERROR does not name %r: %s'
                          % (case.reason, line[:500]), case)


def compare_history(summary, side, case, source, first, got):
    """`got` must be the comparable transactions source.txns[first:...]."""
    expected = [t for t in source.txns[first:first + len(got)]]
    for number, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            what = 'tid %s where the source has %s' % (
                g[0].hex(), e[0].hex()) if g[0] != e[0] else \
                'transaction %s differs from the source' % e[0].hex()
            summary.violation('partial/unchecked transactions', side,
                              'replica transaction %d: %s' % (
                                  first + number, what), case)
            return False
    return True


def judge_position(summary, side, case, source, tid):
    """The replica, whose last transaction is `tid`, must hold exactly the
    transactions whose commit was intact: fewer lost a valid one, more
    committed an unchecked one.  Returns its position in the source."""
    position = source.index.get(tid)
    if position is None:
        summary.violation('partial/unchecked transactions', side,
                          "the replica's last transaction %s is not in the "
                          'source' % tid.hex(), case)
        raise LaneAbort()
    expected = case.start + case.commits
    if position < expected:
        summary.violation('lost valid transactions', side,
                          'at source index %d, expected %d' % (
                              position, expected), case)
    elif position > expected:
        summary.violation('partial/unchecked transactions', side,
                          'at source index %d, expected %d' % (
                              position, expected), case)
    return position


# Expected WARNINGs: a corrupted record restored before its commit's
# checksum rejects the stream may differ from its back pointer's data
# (FileStorage says so; zrsd makes that a WARNING).
ALLOWED_WARNINGS = ('cannot connect', 'commits without checksums',
                    'back pointer of', 'Mismatch between data and backpointer')


_ZRSD_FILE = re.compile(r'File "([^"]*%szrsd%s[^"]*\.py)"' % (
    re.escape(os.sep), re.escape(os.sep)))


def traceback_from_protocol(lines):
    """Did the exception of this traceback come out of zrsd/protocol.py?

    The innermost zrsd frame tells: every traceback passes through
    `FrameDecoder.feed`, but a decoding error must not come from there.
    """
    files = [m.group(1) for line in lines for m in _ZRSD_FILE.finditer(line)]
    return bool(files) and files[-1].endswith(
        os.path.join('zrsd', 'protocol.py'))


def check_markers(summary, side, markers, case):
    found = os.listdir(markers)
    if found:
        summary.violation('executions', side, 'a hostile pickle ran: %s '
                          'exists' % ', '.join(sorted(found)), case)
        for name in found:
            os.remove(os.path.join(markers, name))


def check_blob_temp(summary, side, blob_dir, case):
    tmp = os.path.join(blob_dir, 'tmp')
    left = [n for n in os.listdir(tmp) if n.startswith('zrsd-')] \
        if os.path.isdir(tmp) else []
    if left:
        summary.violation('side effects', side, 'temporary blob files left '
                          'behind: %s' % ', '.join(left), case)
        for name in left:
            os.remove(os.path.join(tmp, name))


def check_file(summary, side, source, path, blob_dir, position):
    """Reopen a replica's file: it must hold source.txns[:position] exactly,
    blob files included."""
    fs = ZODB.FileStorage.FileStorage(path, blob_dir=blob_dir,
                                      read_only=True)
    try:
        got = [copy_transaction(t) for t in fs.iterator()]
        if len(got) != position:
            summary.violation('partial/unchecked transactions', side,
                              '%s holds %d transactions, expected %d'
                              % (path, len(got), position))
        if not compare_history(summary, side, None, source, 0, got):
            return
        if blob_dir:
            for txn in source.txns[:position]:
                for r in txn.records:
                    if r.blob is None:
                        continue
                    try:
                        with open(fs.loadBlob(r.oid, r.tid), 'rb') as f:
                            content = f.read()
                    except (OSError, POSKeyError) as exc:
                        content = exc
                    if content != r.blob:
                        summary.violation(
                            'partial/unchecked transactions', side,
                            'blob of %s at %s differs from the source (%s)'
                            % (r.oid.hex(), r.tid.hex(), content
                               if isinstance(content, Exception)
                               else '%d bytes' % len(content)))
    finally:
        fs.close()
