"""The results of a run: counters, rejection reasons and violations
(`Summary`), and the exception that ends a lane."""
import collections
import os
import threading
import time

VIOLATIONS = (
    'daemon crashes', 'executions', 'partial/unchecked transactions',
    'lost valid transactions', 'log', 'hangs', 'side effects', 'streams',
    'replica following', 'setup')

# Reasons found in the log for each family of rejection (for the summary).
REASON_FAMILIES = (
    ('checksum mismatch', 'checksum mismatch'),
    ('too large', 'frame too large'),
    ('refused global', 'refused global'),
    ('refused persistent id', 'refused persistent id'),
    ('refused _codecs.encode', 'refused _codecs.encode'),
    ('non-increasing tid', 'non-increasing tid'),
    ('record tid', 'record tid'),
    ('byte message after the handshake', 'message after the handshake'),
    ('unexpected', 'unexpected message'),
    ('undecodable', 'undecodable message'),
    ('bad ', 'bad field'),
    ('blob block of', 'blob block too big'),
    ('applying transaction', 'apply failed'),
    ('no handshake within', 'handshake timeout'),
    ('unknown protocol', 'unknown protocol'),
    ('is not in this storage', 'tid not in the history'),
    ('start tid of', 'tid not 8 bytes'),
)


def reason_family(text):
    for needle, family in REASON_FAMILIES:
        if needle in text:
            return family
    return 'other'


class LaneAbort(Exception):
    """A lane cannot go on (its daemon died or hung); already recorded."""


class Summary:
    """Counters and violations of a run; thread-safe."""

    def __init__(self, directory, seed, cases):
        self.directory = directory
        self.seed = seed
        self.cases = cases
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.reasons = collections.defaultdict(collections.Counter)
        self.violations = []
        self.kinds = collections.Counter()   # (category, case kind)
        self.notes = []
        self.started = time.monotonic()
        self.elapsed = None
        self.seconds = collections.Counter()

    def add(self, side, key, n=1):
        with self.lock:
            self.counts[side, key] += n

    def get(self, side, key):
        return self.counts[side, key]

    def reason(self, side, text):
        with self.lock:
            self.reasons[side][reason_family(text)] += 1

    def violation(self, category, side, text, case=None):
        assert category in VIOLATIONS, category
        if case is not None:
            text = '%s\n    %s' % (case.describe(), text)
            path = self._save(case, category, text)
            text += '\n    wire bytes: %s' % path
        with self.lock:
            self.violations.append((category, side, text))
            self.kinds[category, case.kind if case else '-'] += 1

    def _save(self, case, category, text):
        directory = os.path.join(self.directory, 'violations')
        os.makedirs(directory, exist_ok=True)
        base = os.path.join(directory, '%s-%d' % (case.lane, case.number))
        with open(base + '.bin', 'wb') as f:
            f.write(case.wire)
        with open(base + '.txt', 'a') as f:
            f.write('seed %s; %s: %s\n' % (self.seed, category, text))
        return base + '.bin'

    @property
    def clean(self):
        return not self.violations

    def count(self, category):
        return sum(1 for c, _, _ in self.violations if c == category)

    def report(self, details=20):
        c = self.get
        lines = ['zrsd fuzz, seed %s: %d cases per side, %d in-process; '
                 '%.1f s' % (self.seed, self.cases, c('in-process', 'cases'),
                             self.elapsed or 0.0)]
        if c('secondary', 'cases'):
            lines.append(
                '  secondary   %d cases (plain %d, blobs %d) = %d '
                'connections: %d rejected with an ERROR, %d ended without '
                'one; %d transactions committed; %d replica epochs; %.1f s'
                % (c('secondary', 'cases'), c('secondary', 'cases plain'),
                   c('secondary', 'cases blobs'),
                   c('secondary', 'connections'),
                   c('secondary', 'rejected'), c('secondary', 'closed'),
                   c('secondary', 'commits'), c('secondary', 'epochs'),
                   self.seconds['secondary']))
        if c('primary', 'cases'):
            lines.append(
                '  primary     %d cases = %d connections: %d refused with an '
                'ERROR, %d without one; %d streams verified (%d '
                'transactions); %d batches, the replica followed %d; %.1f s'
                % (c('primary', 'cases'), c('primary', 'connections'),
                   c('primary', 'refused'), c('primary', 'not refused'),
                   c('primary', 'streams verified'),
                   c('primary', 'transactions verified'),
                   c('primary', 'batches'), c('primary', 'followed'),
                   self.seconds['primary']))
        if c('in-process', 'cases'):
            seconds = self.seconds['in-process'] or 1e-9
            lines.append(
                '  in-process  %d cases: %d rejected, %d ended without error;'
                ' %d transactions committed; %d epochs; %.0f cases/s'
                % (c('in-process', 'cases'), c('in-process', 'rejected'),
                   c('in-process', 'closed'), c('in-process', 'commits'),
                   c('in-process', 'epochs'),
                   c('in-process', 'cases') / seconds))
        for side in ('secondary', 'primary', 'in-process'):
            if self.reasons[side]:
                lines.append('  %-11s rejections: %s' % (side, ', '.join(
                    '%s %d' % item
                    for item in self.reasons[side].most_common())))
        lines.extend('  ' + note for note in self.notes)
        lines.append('  violations:')
        for category in VIOLATIONS:
            kinds = sorted(((n, kind) for (c, kind), n in self.kinds.items()
                            if c == category), reverse=True)
            lines.append('    %-32s %d%s' % (
                category, self.count(category), '  (%s)' % ', '.join(
                    '%s %d' % (kind, n) for n, kind in kinds)
                if kinds else ''))
        for category, side, text in self.violations[:details]:
            lines.append('  - [%s] %s: %s' % (side, category, text))
        if len(self.violations) > details:
            lines.append('  ... and %d more' % (
                len(self.violations) - details))
        lines.append('  result: %s' % ('CLEAN' if self.clean else
                                       'VIOLATIONS (all of them in %s)'
                                       % os.path.join(self.directory,
                                                      'violations.txt')))
        return '\n'.join(lines)
