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
from .copy_cases import CopyCases, CopySource
from .copy_side import CopyInProcessLane, CopyProcessLane
from .judges import Summary
from .nodes import close_all
from .pickles import HOSTILES, arm_check
from .primary_side import PrimarySide
from .secondary_side import InProcessLane, ReplicaLane
from .source import build_source, source_size

LANES = ('plain', 'blobs')
SIDES = {'both': ('secondary', 'primary'), 'secondary': ('secondary',),
         'primary': ('primary',), 'none': ()}


def run(cases, seed, sides=SIDES['both'], in_process_cases=0,
        workdir=None, verbose=False, check_checksums=True, keep=False,
        copy_cases=0, copy_in_process_cases=0, copy_lanes=LANES):
    """Run the fuzzer; returns a `Summary`.

    `cases` per side (the secondary side splits them over its two lanes);
    `in_process_cases` per in-process lane; `copy_cases` (real replicas)
    and `copy_in_process_cases` per copy lane of `copy_lanes`.
    `check_checksums=False` breaks the in-process receiver on purpose (to
    show that the oracle notices).  `keep` keeps every process's files.
    """
    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix='zrsd-fuzz-')
    summary = Summary(workdir, seed, cases)
    path = functools.partial(os.path.join, workdir)
    markers = path('markers')
    os.makedirs(markers, exist_ok=True)
    armed, duds = arm_check(path('controls'))
    summary.notes.append('hostile pickles: %d, of which %d armed (each '
                         'created its marker under plain pickle.loads)'
                         % (len(HOSTILES), armed))
    for name in duds:
        summary.violation('setup', 'fuzzer', 'hostile pickle %s does not '
                          'fire under pickle.loads' % name)
    if 'secondary' in sides or in_process_cases:
        size = source_size(max(cases // 2, in_process_cases // 20))
        sources = {name: build_source(path('sources'), name, size,
                                      name == 'blobs') for name in LANES}
    scratch = tmpfs_directory(workdir)
    threaded, later = [], []      # (lane, cases): in threads, then in turn
    if 'secondary' in sides:
        threaded += [(ReplicaLane(
            CaseGenerator(sources[name], name, seed, markers),
            path('secondary-' + name), summary, verbose, keep), share)
            for name, share in zip(LANES, ((cases + 1) // 2, cases // 2))]
    if 'primary' in sides:
        threaded.append((PrimarySide(path('primary'), seed, summary,
                                     verbose, keep), cases))
    for name in copy_lanes if copy_cases or copy_in_process_cases else ():
        generator = CopyCases(CopySource(build_source(
            path('sources'), 'copy-' + name, 30, name == 'blobs')),
            'copy-' + name, seed, markers)
        later += [(CopyInProcessLane(generator, scratch, summary),
                   copy_in_process_cases),
                  (CopyProcessLane(generator, path('copy-' + name), summary,
                                   verbose), copy_cases)]
    later += [(InProcessLane(CaseGenerator(
        sources[name], 'in-process-' + name, seed, markers), scratch,
        summary, check_checksums), in_process_cases)
        for name in LANES if in_process_cases]
    threads = [threading.Thread(target=timed, args=(summary, *lane),
                                daemon=True) for lane in threaded]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for lane in later:
            timed(summary, *lane)
            close_all()
    finally:
        close_all()
        shutil.rmtree(scratch, ignore_errors=True)
    if not summary.clean:
        with open(path('violations.txt'), 'w') as f:
            f.write(summary.report(details=len(summary.violations)) + '\n')
    elif own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def tmpfs_directory(parent):
    """A directory on tmpfs if there is one (the in-process lanes commit
    thousands of transactions; fsync there costs nothing), else in
    `parent`."""
    if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK):
        return tempfile.mkdtemp(prefix='zrsd-fuzz-', dir='/dev/shm')
    return tempfile.mkdtemp(prefix='in-process-', dir=parent)


def timed(summary, lane, count):
    """`lane.run(count)` if `count`: an exception is a 'setup' violation;
    the side's time is that of its slowest lane."""
    started = time.monotonic()
    try:
        if count:
            lane.run(count)
    except Exception:
        summary.violation('setup', lane.side, traceback.format_exc())
    finally:
        with summary.lock:
            summary.seconds[lane.side] = max(summary.seconds[lane.side],
                                             time.monotonic() - started)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Fuzz the ZRS protocol against real zrsd processes.')
    arg = parser.add_argument
    arg('--cases', type=int, default=100, help='cases per side (100)')
    arg('--seed', default='1', help='random seed')
    arg('--side', default='both', choices=SIDES,
        help='which process side(s) to fuzz')
    arg('--in-process', action='store_true',
        help='also run the in-process layer')
    arg('--in-process-cases', type=int, help='in-process cases per source '
        '(default: 10 x --cases, at least 1000)')
    arg('--copy-cases', type=int, default=0, help='file copy (zrsd-seed1) '
        'cases per lane with real zrsd replicas (0)')
    arg('--copy-in-process-cases', type=int, help='file copy cases per '
        'lane in process (default: 20 x --copy-cases)')
    arg('--copy-lanes', default='plain,blobs', help='copy lanes to run',
        type=lambda text: tuple(text.split(',')))
    arg('--workdir', help='work here (default: a new temporary directory, '
        'removed when clean)')
    arg('--keep', action='store_true',
        help="keep the processes' files even when clean")
    arg('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    if args.in_process_cases is None:
        args.in_process_cases = max(1000, 10 * args.cases)
    if args.copy_in_process_cases is None:
        args.copy_in_process_cases = 20 * args.copy_cases
    summary = run(args.cases, args.seed, SIDES[args.side],
                  args.in_process_cases if args.in_process else 0,
                  args.workdir, args.verbose, keep=args.keep,
                  copy_cases=args.copy_cases, copy_lanes=args.copy_lanes,
                  copy_in_process_cases=args.copy_in_process_cases)
    print(summary.report())
    return 0 if summary.clean else 1
