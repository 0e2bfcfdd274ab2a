"""What counts as a violation, and the results of a run: each outcome (an
ERROR line or none, the position a replica resumes from, the history it
holds, files left behind) judged against what a correct replica does, and
recorded in the `Summary` (counters, rejection reasons, violations)."""
import collections
import contextlib
import os
import re
import sys
import threading
import time

from harness.history import blob_problems, transactions
from harness.process import captured_logs

from .cases import WINDOW_NEED

MAX_ERROR_LINE = 2000               # a "clear" ERROR line is shorter

VIOLATIONS = (
    'daemon crashes', 'executions', 'partial/unchecked transactions',
    'lost valid transactions', 'log', 'hangs', 'side effects', 'streams',
    'replica following', 'setup')
UNCHECKED = 'partial/unchecked transactions'

# A text in the ERROR line, and its family of rejection (for the summary).
REASON_FAMILIES = [(needle, family or needle) for needle, family in (
    ('checksum mismatch', None), ('too large', 'frame too large'),
    ('refused global', None), ('refused persistent id', None),
    ('refused _codecs.encode', None), ('non-increasing tid', None),
    ('record tid', None),
    ('byte message after the handshake', 'message after the handshake'),
    ('unexpected', 'unexpected message'),
    ('undecodable', 'undecodable message'), ('bad ', 'bad field'),
    ('blob block of', 'blob block too big'),
    ('applying transaction', 'apply failed'),
    ('no handshake within', 'handshake timeout'), ('unknown protocol', None),
    ('is not in this storage', 'tid not in the history'),
    ('start tid of', 'tid not 8 bytes'))]


class LaneAbort(Exception):
    """A lane cannot go on (its daemon died or hung); already recorded."""


class Lane:
    """Runs `count` cases: `open()`, `run_case(number)` each, `close()`.
    With `renew`, it starts afresh (`close`, `open`) whenever fewer than
    `WINDOW_NEED` transactions of the `source` follow its `position`.  Its
    judges record in `summary` under its `side`; those of an `in_process`
    lane also read this process's log records (`logs`)."""

    renew = verbose = in_process = False

    def add(self, key, n=1):
        self.summary.add(self.side, key, n)

    def violation(self, category, text, case=None):
        self.summary.violation(category, self.side, text, case)

    def abort(self, category, text, case=None):
        """A violation that ends the lane: raise what this returns."""
        self.violation(category, text, case)
        return LaneAbort()

    def say(self, text):
        if self.verbose:
            print('[%s] %s' % (self.name, text), file=sys.stderr, flush=True)

    def run(self, count):
        self.count = count
        logs = captured_logs() if self.in_process else contextlib.nullcontext()
        with logs as self.logs:
            try:
                self.open()
                for number in range(count):
                    if self.renew and \
                            len(self.source) - self.position < WINDOW_NEED:
                        self.close()
                        self.open()
                    self.add('cases')
                    self.run_case(number)
            except LaneAbort:
                pass
            finally:
                self.close()

    def judge(self, case, error_text, line=None):
        """One connection's outcome against the case's expectation:
        `error_text` is the rejection reason (None: the stream just ended),
        `line` the whole ERROR line (its length is checked)."""
        if error_text is None:
            self.add('closed')
            if case.expect == 'reject':
                self.violation('log', 'a must-reject case ended without an '
                               'ERROR', case)
            return
        self.add('rejected')
        self.summary.reason(self.side, error_text)
        line = line or error_text
        self.check_length(line, case)
        if case.expect == 'close':
            self.violation('log', 'ERROR for a stream that just ended: %s'
                           % line[:500], case)
        elif case.reason and case.reason not in error_text:
            self.violation('log', 'ERROR does not name %r: %s' % (
                case.reason, line[:500]), case)

    def scan_log(self, log, ok, text):
        """CRITICAL lines of `log` (a `LogTail`) are crashes; an ERROR line
        that is not `ok(index, record)` is a violation described by
        `text`."""
        for index, record in enumerate(log.poll()):
            if record.level == 'CRITICAL':
                self.violation('daemon crashes', 'CRITICAL: %s'
                               % record.line[:500])
            elif record.is_error and not ok(index, record):
                self.violation('log', '%s: %s' % (text, record.line[:500]))

    def check_length(self, line, case=None, kind=''):
        if len(line) > MAX_ERROR_LINE:
            self.violation('log', '%sERROR line of %d characters: %s...' % (
                kind, len(line), line[:300]), case)

    def compare_history(self, case, first, got):
        """`got` must be the transactions source.txns[first:...]."""
        for number, (g, e) in enumerate(zip(got, self.source.txns[first:])):
            if g != e:
                self.violation(UNCHECKED, 'replica transaction %d: %s' % (
                    first + number, 'tid %s where the source has %s' % (
                        g[0].hex(), e[0].hex()) if g[0] != e[0] else
                    'transaction %s differs from the source' % e[0].hex()),
                    case)
                return False
        return True

    def advance(self, case, tid, read):
        """The replica, whose last transaction is now `tid`, must hold
        exactly the transactions whose commit was intact: fewer lost a
        valid one, more committed an unchecked one.  Its new transactions,
        `read(first new tid)`, must be the source's; `position` moves."""
        old, position = self.position, self.source.index.get(tid)
        if position is None:
            raise self.abort(UNCHECKED, "the replica's last transaction %s "
                             'is not in the source' % tid.hex(), case)
        expected = case.start + case.commits
        if position != expected:
            self.violation('lost valid transactions' if position < expected
                           else UNCHECKED, 'at source index %d, expected %d'
                           % (position, expected), case)
        if position > old:
            got = read(self.source.tid(old + 1))
            if self.compare_history(case, old, got) and \
                    len(got) != position - old:
                self.violation(UNCHECKED, 'the file has %d new transactions,'
                               ' the replica says %d' % (
                                   len(got), position - old), case)
            self.add('commits', position - old)
        self.position = position

    def check_leftovers(self, case):
        """No hostile pickle ran (no marker file), no temporary blob file is
        left behind; both are removed for the next case."""
        markers, blob_dir = self.generator.markers, self.blob_dir
        tmp = os.path.join(blob_dir or '', 'tmp')
        for category, directory, names, text in (
                ('executions', markers, os.listdir(markers),
                 'a hostile pickle ran: %s exists'),
                ('side effects', tmp, [
                    n for n in os.listdir(tmp) if n.startswith('zrsd-')]
                 if blob_dir and os.path.isdir(tmp) else [],
                 'temporary blob files left behind: %s')):
            if names:
                self.violation(category, text % ', '.join(sorted(names)),
                               case)
            for name in names:
                os.remove(os.path.join(directory, name))

    def check_file(self, path, blob_dir, position):
        """Reopen a replica's file: it must hold source.txns[:position]
        exactly, blob files included.  Returns whether it does."""
        got = transactions(path, blob_dir)
        before = len(self.summary.violations)
        if len(got) != position:
            self.violation(UNCHECKED, '%s holds %d transactions, expected %d'
                           % (path, len(got), position))
        if not self.compare_history(None, 0, got):
            return False
        for problem in blob_problems(got, self.source.txns):
            self.violation(UNCHECKED, problem)
        return len(self.summary.violations) == before


class Summary:
    """Counters and violations of a run; thread-safe."""

    def __init__(self, directory, seed, cases):
        self.directory, self.seed, self.cases = directory, seed, cases
        self.lock = threading.Lock()
        self.counts = collections.Counter()          # (side, key)
        self.reasons = collections.defaultdict(collections.Counter)
        self.violations = []         # (category, side, text, case kind)
        self.notes = []
        self.started = time.monotonic()
        self.seconds = collections.Counter()         # side: seconds

    def add(self, side, key, n=1):
        with self.lock:
            self.counts[side, key] += n

    def get(self, side, key):
        return self.counts[side, key]

    def reason(self, side, text):
        family = next((f for needle, f in REASON_FAMILIES if needle in text),
                      'other')
        with self.lock:
            self.reasons[side][family] += 1

    def violation(self, category, side, text, case=None):
        """Record a violation; one of a case also goes, with the case's
        wire bytes, under violations/ (to replay it)."""
        assert category in VIOLATIONS, category
        if case is not None:
            text = '%s\n    %s' % (case.describe(), text)
            base = os.path.join(self.directory, 'violations', '%s-%d' % (
                case.lane, case.number))
            os.makedirs(os.path.dirname(base), exist_ok=True)
            with open(base + '.bin', 'wb') as f:
                f.write(case.wire)
            with open(base + '.txt', 'a') as f:
                f.write('seed %s; %s: %s\n' % (self.seed, category, text))
            text += '\n    wire bytes: %s.bin' % base
        with self.lock:
            self.violations.append(
                (category, side, text, case.kind if case else '-'))

    @property
    def clean(self):
        return not self.violations

    def count(self, category):
        return sum(1 for c, *_ in self.violations if c == category)

    def report(self, details=20):
        """The summary: per side its counters, time and rejections; the
        violations by category and case kind; the first `details`."""
        lines = ['zrsd fuzz, seed %s: %d cases per side; %.1f s' % (
            self.seed, self.cases, time.monotonic() - self.started)]
        for side in ('secondary', 'primary', 'in-process', 'copy',
                     'copy-in-process'):
            counts = ['%s %d' % (key, n)
                      for (s, key), n in self.counts.items() if s == side]
            if counts:
                lines.append('  %-11s %s; %.1f s' % (
                    side, ', '.join(counts), self.seconds[side]))
            if self.reasons[side]:
                lines.append('  %-11s rejections: %s' % (side, ', '.join(
                    '%s %d' % item
                    for item in self.reasons[side].most_common())))
        lines.extend('  ' + note for note in self.notes)
        lines.append('  violations:')
        for category in VIOLATIONS:
            kinds = collections.Counter(
                kind for c, _, _, kind in self.violations if c == category)
            lines.append('    %-32s %d%s' % (
                category, sum(kinds.values()), '  (%s)' % ', '.join(
                    '%s %d' % item for item in kinds.most_common())
                if kinds else ''))
        for category, side, text, _ in self.violations[:details]:
            lines.append('  - [%s] %s: %s' % (side, category, text))
        if len(self.violations) > details:
            lines.append('  ... and %d more' % (
                len(self.violations) - details))
        lines.append('  result: %s' % ('CLEAN' if self.clean else
                                       'VIOLATIONS (all of them in %s)'
                                       % os.path.join(self.directory,
                                                      'violations.txt')))
        return '\n'.join(lines)


_ZRSD_FILE = re.compile(r'File "([^"]*%szrsd%s[^"]*\.py)"' % (
    re.escape(os.sep), re.escape(os.sep)))


def traceback_from_protocol(lines):
    """Did the exception of this traceback come out of zrsd/protocol.py?
    (The innermost zrsd frame tells: every traceback passes through
    `FrameDecoder.feed`, but a decoding error must not come from there.)"""
    files = [m.group(1) for line in lines for m in _ZRSD_FILE.finditer(line)]
    return bool(files) and files[-1].endswith(
        os.path.join('zrsd', 'protocol.py'))
