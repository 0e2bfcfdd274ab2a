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
from .in_process import InProcessLane, tmpfs_directory
from .judges import Summary
from .nodes import close_all
from .pickles import HOSTILES, arm_check
from .primary_side import PrimarySide
from .secondary_side import ReplicaLane
from .source import build_source, source_size


def run(cases, seed, sides=('secondary', 'primary'), in_process_cases=0,
        workdir=None, verbose=False, check_checksums=True, keep=False,
        copy_cases=0, copy_in_process_cases=0, copy_lanes=('plain',
                                                           'blobs')):
    """Run the fuzzer; returns a `Summary`.

    `cases` per side (the secondary side splits them over its two lanes);
    `in_process_cases` per in-process lane source (plain and blobs).
    `check_checksums=False` breaks the in-process receiver on purpose (to
    show that the oracle notices).  `keep` keeps every process's files
    (they are removed when clean otherwise).  `copy_cases` (real zrsd
    replicas) and `copy_in_process_cases`: per copy lane (plain, blobs),
    cases of a new replica's file copy (`copy_side`) in `copy_lanes`.
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
    if copy_cases or copy_in_process_cases:
        timed(summary, 'copy', functools.partial(
            copy_run, workdir, seed, markers, summary, copy_cases,
            copy_in_process_cases, copy_lanes, verbose))
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


def copy_run(workdir, seed, markers, summary, cases, in_process_cases,
             lanes, verbose):
    """The copy lanes (plain, blobs): in process, then processes."""
    for name in lanes:
        directory = os.path.join(workdir, 'sources')
        source = build_source(directory, 'copy-' + name, 30, name == 'blobs')
        generator = CopyCases(CopySource(source, os.path.join(
            directory, 'copy-%s.fs' % name)), 'copy-' + name, seed, markers)
        if in_process_cases:
            scratch = tmpfs_directory(workdir)
            started = time.monotonic()
            try:
                CopyInProcessLane(generator, scratch, summary).run(
                    in_process_cases)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                summary.seconds['copy-in-process'] += \
                    time.monotonic() - started
        if cases:
            CopyProcessLane(generator, os.path.join(workdir, 'copy-' + name),
                            summary, verbose).run(cases)
            close_all()


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
    parser.add_argument('--copy-cases', type=int, default=0,
                        help='file copy (zrsd-seed1) cases per lane with '
                        'real zrsd replicas (default 0)')
    parser.add_argument('--copy-in-process-cases', type=int, default=None,
                        help='file copy cases per lane in process (default:'
                        ' 20 x --copy-cases)')
    parser.add_argument('--copy-lanes', default='plain,blobs',
                        help='copy lanes to run (default plain,blobs)')
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
    copy_in_process = args.copy_in_process_cases
    if copy_in_process is None:
        copy_in_process = 20 * args.copy_cases
    summary = run(args.cases, args.seed, sides,
                  in_process if args.in_process else 0, args.workdir,
                  args.verbose, keep=args.keep, copy_cases=args.copy_cases,
                  copy_in_process_cases=copy_in_process,
                  copy_lanes=tuple(args.copy_lanes.split(',')))
    print(summary.report())
    return 0 if summary.clean else 1
