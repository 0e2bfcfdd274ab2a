"""The command line: options, the phases in order, the results on stdout and
in var/bench/results-TIMESTAMP.json."""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

from harness.process import ROOT

from .catchup import run_catchup
from .lag import LAG_PAIRS, run_lag
from .measure import BENCH_DIR, fsync_probe, log, machine_load
from .memory import BLOB_MB, run_memory
from .nodes import ZCZRS_TO_ZCZRS, Run
from .reads import run_reads
from .report import report, summarise
from .workload import PRESETS, workload

PHASES = ('catchup', 'lag', 'reads', 'memory')


def parse_args(argv=None):
    """The options; the preset fills in the lengths not given."""
    parser = argparse.ArgumentParser(
        description='zrsd benchmark (see README.md, "Benchmark")')
    parser.add_argument('--preset', choices=sorted(PRESETS),
                        default='default')
    parser.add_argument('--seed', type=int, default=20261129)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--lag-seconds', type=float, default=None,
                        help='seconds of commits per rate per lag session '
                        '(default: 10, small preset 3)')
    parser.add_argument('--read-seconds', type=float, default=None,
                        help='seconds per read measurement (default: 5, '
                        'small preset 2)')
    parser.add_argument('--blob-mb', type=int, default=BLOB_MB,
                        help='size of the memory test blob (default 1024)')
    parser.add_argument('--phases', default=','.join(PHASES),
                        help='comma-separated subset of catchup, lag, '
                        'reads, memory')
    parser.add_argument('--no-reference-lag', action='store_true',
                        help='skip the zc.zrs -> zc.zrs lag reference')
    parser.add_argument('--lag-probe', action='store_true',
                        help='diagnostic: also follow each lag primary\'s '
                        'stream with a bare consumer and note when each '
                        'commit left it (adds a secondary to the primary)')
    parser.add_argument('--primaries-on-disk', action='store_true',
                        help='keep the primaries\' files in the run '
                        'directory instead of on tmpfs (/dev/shm)')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--keep', action='store_true',
                        help='keep the data files of the run directory')
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.lag_seconds is None:
        args.lag_seconds = preset['lag_seconds']
    if args.read_seconds is None:
        args.read_seconds = preset['read_seconds']
    unknown = set(phases(args)) - set(PHASES)
    if unknown:
        parser.error('unknown phase(s): %s' % ', '.join(sorted(unknown)))
    return args


def phases(args):
    return [p.strip() for p in args.phases.split(',') if p.strip()]


def environment():
    """Versions, git revision and machine, for the JSON."""
    def version(name):
        try:
            from importlib.metadata import version as v
            return v(name)
        except Exception:
            return None
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                             cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = bool(subprocess.run(['git', 'status', '--porcelain'],
                                    cwd=ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except Exception:
        rev, dirty = None, None
    return dict(python=platform.python_version(), cpus=os.cpu_count(),
                machine=platform.machine(), kernel=platform.release(),
                load_average=os.getloadavg(), git=rev, git_dirty=dirty,
                zrsd=version('zrsd'), ZODB=version('ZODB'),
                ZEO=version('ZEO'), zc_zrs=version('zc.zrs'))


def run_phases(args, workload_path, meta, directory=None):
    """Run the chosen phases on the workload; returns (the Run, the raw
    results).  Every server is stopped and the data files are removed
    (unless --keep) when it returns."""
    run = Run(args, workload_path, meta, directory)
    results = dict(started=time.strftime('%Y-%m-%d %H:%M:%S'),
                   args=vars(args), workload=meta,
                   environment=environment(), run_dir=run.dir)
    log('run directory %s%s' % (
        os.path.relpath(run.dir, ROOT),
        ', primaries in %s' % run.primary_dir if run.primary_dir else ''))
    results['primary_dir'] = run.primary_dir
    results['fsync_ms'] = fsync_probe(run.dir)
    results['load'] = [('start',) + machine_load()]
    chosen = phases(args)
    lag_pairs = [pair for pair in LAG_PAIRS if not (
        pair is ZCZRS_TO_ZCZRS and args.no_reference_lag)]
    try:
        if 'catchup' in chosen:
            run_catchup(run, args.rounds, results)
            results['load'].append(('catchup',) + machine_load())
        if 'lag' in chosen:
            run_lag(run, args.rounds, args.lag_seconds, results, lag_pairs)
            results['load'].append(('lag',) + machine_load())
        if 'reads' in chosen:
            run_reads(run, args.rounds, args.read_seconds, results)
            results['load'].append(('reads',) + machine_load())
        if 'memory' in chosen:
            # Everything else is done: free the disk and tmpfs first.
            run.stop_primaries()
            clean_up(run, args)
            run_memory(run, args.blob_mb, results)
            results['load'].append(('memory',) + machine_load())
    finally:
        clean_up(run, args)
    return run, results


def clean_up(run, args):
    """Stop every server; remove the primaries' tmpfs directory and, unless
    --keep, the data files of the run directory."""
    run.close()
    run.remove_primaries()
    if not args.keep:
        run.remove_data()


def write_results(results, stamp, extra_path=None):
    """var/bench/results-STAMP.json (and `extra_path`); every commit of the
    lag sessions goes to a compact file of its own."""
    samples = {}
    for pair, runs in results.get('lag', {}).items():
        for run in runs:
            for rate, res in run.get('rates', {}).items():
                samples['%s-%s-%s' % (pair, run['round'], rate)] = \
                    res.pop('samples', [])
    paths = [os.path.join(BENCH_DIR, 'results-%s.json' % stamp)]
    if extra_path:
        paths.append(extra_path)
    if samples:
        results['lag_samples_file'] = paths[0][:-5] + '-lag-samples.json'
        with open(results['lag_samples_file'], 'w') as f:
            json.dump(dict(
                columns=['seconds since the first commit', 'lag ms',
                         'loaded ms', 'commit duration ms',
                         'primary sent ms (--lag-probe)'],
                sessions=samples), f, separators=(',', ':'))
    for out in paths:
        with open(out, 'w') as f:
            json.dump(results, f, indent=1, default=_json_default)
        log('results written to %s' % out)


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(repr(value))


def main(argv=None):
    """`scripts/bench.py`: run, print the tables, write the JSON; 0."""
    args = parse_args(argv)
    # Threads of this process (lag writers) hand the GIL over sooner.
    sys.setswitchinterval(0.0005)
    started = time.monotonic()
    path, meta = workload(args.preset, args.seed)
    run, results = run_phases(args, path, meta)
    results['seconds'] = round(time.monotonic() - started, 1)
    s = results['summary'] = summarise(results, meta)
    sys.stdout.write(report(results, s, meta, args) + '\n')
    sys.stdout.write('total %.0f s\n' % results['seconds'])
    write_results(results, run.stamp, args.json)
    return 0
