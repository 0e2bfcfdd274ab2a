"""Running the fuzzer: `run()` (what the tests call) and the command line
(`main`, behind scripts/fuzz.py)."""
import argparse
import functools
import os
import shutil
import tempfile
import threading
import time
import traceback

from .cases import CaseGenerator
from .in_process import InProcessLane, tmpfs_directory
from .judges import Summary
from .nodes import close_all
from .pickles import HOSTILES, arm_check
from .primary_side import PrimarySide
from .secondary_side import ReplicaLane
from .source import build_source, source_size


def run(cases, seed, sides=('secondary', 'primary'), in_process_cases=0,
        workdir=None, verbose=False, check_checksums=True, keep=False):
    """Run the fuzzer; returns a `Summary`.

    `cases` per side (the secondary side splits them over its two lanes);
    `in_process_cases` per in-process lane source (plain and blobs).
    `check_checksums=False` breaks the in-process receiver on purpose (to
    show that the oracle notices).  `keep` keeps every process's files
    (they are removed when clean otherwise).
    """
    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix='zrsd-fuzz-')
    summary = Summary(workdir, seed, cases)
    markers = os.path.join(workdir, 'markers')
    os.makedirs(markers, exist_ok=True)
    armed, duds = arm_check(os.path.join(workdir, 'controls'))
    summary.notes.append('hostile pickles: %d, of which %d armed (each '
                         'created its marker under plain pickle.loads)'
                         % (len(HOSTILES), armed))
    for name in duds:
        summary.violation('setup', 'fuzzer', 'hostile pickle %s does not '
                          'fire under pickle.loads' % name)
    sources = {}
    if 'secondary' in sides or in_process_cases:
        size = source_size(max(cases // 2, in_process_cases // 20))
        sources = {name: build_source(os.path.join(workdir, 'sources'),
                                      name, size, name == 'blobs')
                   for name in ('plain', 'blobs')}

    def generator(name, prefix=''):
        return CaseGenerator(sources[name], prefix + name, seed, markers)

    lanes = []          # (side, what runs the lane)
    if 'secondary' in sides and cases:
        lanes += [('secondary', functools.partial(ReplicaLane(
            generator(name), os.path.join(workdir, 'secondary-' + name),
            summary, verbose, keep).run, share))
            for name, share in (('plain', (cases + 1) // 2),
                                ('blobs', cases // 2))]
    if 'primary' in sides and cases:
        lanes.append(('primary', PrimarySide(
            os.path.join(workdir, 'primary'), seed, cases, summary, verbose,
            keep).run))
    try:
        threads = [threading.Thread(target=timed, args=(summary, side, lane),
                                    name='fuzz-' + side, daemon=True)
                   for side, lane in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        close_all()
    if in_process_cases:
        directory = tmpfs_directory(workdir)

        def in_process():
            for name in sources:
                InProcessLane(generator(name, 'in-process-'), directory,
                              summary, check_checksums).run(in_process_cases)
        try:
            timed(summary, 'in-process', in_process)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if not summary.clean:
        with open(os.path.join(workdir, 'violations.txt'), 'w') as f:
            f.write(summary.report(details=len(summary.violations)) + '\n')
    if summary.clean and own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def timed(summary, side, target):
    """Run `target()`: an exception is a 'setup' violation; the side's
    time is that of its slowest lane."""
    started = time.monotonic()
    try:
        target()
    except Exception:
        summary.violation('setup', side, traceback.format_exc())
    finally:
        with summary.lock:
            summary.seconds[side] = max(summary.seconds[side],
                                        time.monotonic() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Fuzz the ZRS protocol against real zrsd processes.')
    parser.add_argument('--cases', type=int, default=100,
                        help='cases per side (default 100)')
    parser.add_argument('--seed', default='1', help='random seed')
    parser.add_argument('--side', default='both',
                        choices=['secondary', 'primary', 'both', 'none'],
                        help='which process side(s) to fuzz')
    parser.add_argument('--in-process', action='store_true',
                        help='also run the in-process layer')
    parser.add_argument('--in-process-cases', type=int, default=None,
                        help='in-process cases per source (default: '
                        '10 x --cases, at least 1000)')
    parser.add_argument('--workdir', help='work here (default: a new '
                        'temporary directory, removed when clean)')
    parser.add_argument('--keep', action='store_true',
                        help="keep the processes' files even when clean")
    parser.add_argument('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    sides = {'both': ('secondary', 'primary'), 'none': ()}.get(
        args.side, (args.side,))
    in_process = args.in_process_cases
    if in_process is None:
        in_process = max(1000, 10 * args.cases)
    summary = run(args.cases, args.seed, sides,
                  in_process if args.in_process else 0, args.workdir,
                  args.verbose, keep=args.keep)
    print(summary.report())
    return 0 if summary.clean else 1
