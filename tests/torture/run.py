"""The torture runner: counts, the report, the command line
(`scripts/torture.py`).  `main(argv)` may run inside pytest: what it sets
up process-wide (a log handler, a SIGTERM handler) it undoes.
"""
import argparse
import collections
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback

from harness.process import LOG_FORMAT

from . import __doc__ as OVERVIEW
from .disk_full import DiskFull
from .kill_replica import KillReplica
from .links import Links
from .pack import Pack
from .primary_restart import PrimaryRestart
from .scenario import ScenarioFailed

SCENARIOS = {cls.name: cls for cls in (
    KillReplica, Links, PrimaryRestart, Pack, DiskFull)}
COUNTS = {
    'short': dict(replica_kills=3, cuts=10, stalls=1, throttles=1,
                  primary_restarts=1, packs=1, disk_full=1,
                  initial_commits=300),
    'long': dict(replica_kills=50, cuts=200, stalls=20, throttles=10,
                 primary_restarts=10, packs=3, disk_full=3,
                 initial_commits=2000),
}


class Torture:
    """A run: settings, what the scenarios did, every violation found."""

    def __init__(self, workdir, seed, counts, disk_full_variant):
        self.workdir, self.seed, self.counts = workdir, seed, counts
        self.disk_full_variant = disk_full_variant
        self.scenarios, self.notes = [], []     # (name, seconds, outcome)
        self.cycles = collections.Counter()
        self.compared = self.blobs_compared = 0
        # The violations: mismatches, crashes, unexpected ERROR/CRITICAL
        # lines, scenarios that could not finish.
        self.mismatches, self.crashes, self.errors, self.failures = (
            [], [], [], [])

    def violations(self):
        return sum(map(len, (self.mismatches, self.crashes, self.errors,
                             self.failures)))

    def say(self, text):
        print(text, flush=True)

    def run(self, name):
        scenario = SCENARIOS[name](
            self, random.Random('%s-%s' % (self.seed, name)))
        self.say('== %s' % name)
        began = time.monotonic()
        mismatches, crashes = len(self.mismatches), len(self.crashes)
        outcome = 'ok'
        try:
            scenario.run(self.counts)
        except ScenarioFailed as exc:
            outcome = 'FAILED: %s' % str(exc).splitlines()[0]
            self.failures.append('%s: %s' % (name, exc))
        except Exception:
            outcome = 'FAILED: exception'
            self.failures.append('%s: %s' % (name, traceback.format_exc()))
        finally:
            scenario.cleanup()
        expected, unexpected = scenario.scan_logs()
        if expected:
            scenario.say('%d expected ERROR lines (caused on purpose)'
                         % expected)
        found = ['%d %s' % (count, what) for count, what in (
            (len(self.mismatches) - mismatches, 'mismatches'),
            (len(self.crashes) - crashes, 'crashes'),
            (unexpected, 'unexpected error lines')) if count]
        if found:
            outcome = ('VIOLATED: ' if outcome == 'ok'
                       else outcome + '; ') + ', '.join(found)
        took = time.monotonic() - began
        self.scenarios.append((name, took, outcome))
        self.say('== %s: %s (%.1fs)' % (name, outcome, took))

    def summary(self, seconds):
        lines = ['', '==== zrsd torture summary ====']
        lines += ['  %-16s %6.1fs  %s' % row for row in self.scenarios]
        lines += ['  cycles:'] + ['    %-34s %d' % item
                                  for item in sorted(self.cycles.items())]
        lines += ['  note: %s' % note for note in self.notes]
        lines += ['  transactions compared:   %d' % self.compared,
                  '  blob files compared:     %d' % self.blobs_compared]
        for title, found, most in (
                ('mismatches:', self.mismatches, 30),
                ('crashes (not torture):', self.crashes, 30),
                ('unexpected log errors:', self.errors, 30),
                ('scenario failures:', self.failures, None)):
            lines.append('  %-24s %d' % (title, len(found)))
            lines.extend('    ' + f for f in found[:most])
        lines.append('  time: %.1fs; work directory: %s' % (
            seconds, self.workdir))
        verdict = 'CLEAN' if not self.violations() else (
            'FAILED: %d violation(s)' % self.violations())
        return '\n'.join(lines + ['  result: %s' % verdict])


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='torture.py', description=OVERVIEW.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add('--long', action='store_true', help='the long run (50 replica '
        'kills, 200 link cuts, ...); default: the short run')
    add('--seed', type=int, help='seed of the random choices (default: '
        'random, printed)')
    add('--only', action='append', choices=SCENARIOS, metavar='SCENARIO',
        help='run only this scenario (repeatable): %s' % ', '.join(SCENARIOS))
    add('--disk-full', default='auto', choices=('auto', 'tmpfs', 'injected'),
        help='disk-full variant (auto: tmpfs when mounting is allowed, else '
        'injected)')
    add('--workdir', help='where to work (default: a new temporary '
        'directory)')
    add('--keep', action='store_true', help='keep the work directory even '
        'after a clean run')
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    mode = 'long' if args.long else 'short'
    workdir = args.workdir or tempfile.mkdtemp(prefix='zrsd-torture-')
    os.makedirs(workdir, exist_ok=True)
    clients_log = logging.FileHandler(
        os.path.join(workdir, 'torture-clients.log'))
    clients_log.setLevel(logging.WARNING)
    clients_log.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(clients_log)
    names = args.only or list(SCENARIOS)
    print('zrsd torture: %s run, seed %d, scenarios %s, work directory %s'
          % (mode, seed, ', '.join(names), workdir), flush=True)
    torture = Torture(workdir, seed, COUNTS[mode], args.disk_full)
    began = time.monotonic()
    previous = signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
    try:
        for name in names:
            torture.run(name)
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.getLogger().removeHandler(clients_log)
        clients_log.close()
        print(torture.summary(time.monotonic() - began), flush=True)
    if torture.violations():
        print('re-run: %s scripts/torture.py%s --seed %d%s' % (
            os.path.relpath(sys.executable), ' --long' if args.long else '',
            seed, ''.join(' --only %s' % n for n in args.only or ())))
        return 1
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
