"""The command line: the options, the phases in order, the summary and
the text on stdout (what ran where, each phase's table, the targets), the
results in var/bench/results-TIMESTAMP.json."""
import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

from harness.process import ROOT

from . import catchup, commits, lag, memory, reads
from .measure import BENCH_DIR, MB, Targets, fmt, fsync_probe, log, \
    machine_load
from .nodes import Run
from .workload import PRESETS, workload

# Each phase module has NAME, TITLE, run_phase(run) -> its raw results,
# summarise(results, s, targets, meta) and report(s, results, p).
PHASES = (catchup, lag, reads, commits, memory)


def summarise(results, meta):
    """Median/min/max of every figure, ratios per round, targets."""
    s, targets = {}, Targets()
    for phase in PHASES:
        if results.get(phase.NAME):
            phase.summarise(results[phase.NAME], s, targets, meta)
    s['targets'] = list(targets)
    return s


def report(results, s, meta, args):
    """The text of the results (for stdout): what ran where (preset,
    workload, machine load, fsync latency), each phase, the targets."""
    out = ['', 'zrsd benchmark: preset %s, seed %d, %d round(s), %s' % (
        args.preset, args.seed, args.rounds, results['started'])]
    p = out.append
    p('workload: %d transactions, %d records, %d objects, %.1f MB '
      '(%d with extensions, %d of 5 MB)' % (
          meta['transactions'], meta['records'], meta['objects'],
          meta['file_bytes'] / MB, meta['extension_transactions'],
          meta['big_transactions']))
    blobs = results.get('blob_workload')
    if blobs:
        p('blob workload (catch-up (h)): %d transactions, %.1f MB file and '
          '%d blob files of %.1f MB' % (
              blobs['transactions'], blobs['file_bytes'] / MB,
              blobs['blobs'], blobs['blob_bytes'] / MB))
    p('machine: %d CPUs; after each phase, 1-minute load average / CPU '
      'pressure (%% of time tasks waited for a CPU, 60 s): %s' % (
          os.cpu_count(), ', '.join('%s %.1f/%s' % (name, load, fmt(
              pressure, 0) + '%' * (pressure is not None))
              for name, load, pressure in results['load'])))
    p('fsync of a small append on the replicas\' disk (ms): p50 %(p50).2f, '
      'p90 %(p90).2f, p99 %(p99).2f, max %(max).2f' % results['fsync_ms'])
    p('primaries\' files: %s' % (
        'tmpfs (%s)' % results['primary_dir'] if results['primary_dir']
        else 'on disk, in the run directory'))
    p('figures: median (min-max) over rounds; ratios are computed per round')
    for phase in PHASES:
        if results.get(phase.NAME):
            out += ['', phase.TITLE]
            phase.report(s, results[phase.NAME], p)
    if s['targets']:
        out += ['', 'Targets (median over rounds; "worst" is the worst round)']
    for t in s['targets']:
        digits = 3 if '_over_' in t['name'] or 'ratio' in t['name'] else 2
        p('   %-52s %10s  target %-7s %-8s worst %s' % (
            t['label'], fmt(t['value'], digits), t['target'],
            {True: 'met', False: 'NOT MET', None: '-'}[t['met']],
            fmt(t['worst'], digits)))
    return '\n'.join(out + [''])


def parse_args(argv=None):
    """The options; the preset fills in the lengths not given."""
    parser = argparse.ArgumentParser(
        description='zrsd benchmark (see docs/BENCHMARK.md)')
    add = parser.add_argument
    add('--preset', choices=sorted(PRESETS), default='default')
    add('--seed', type=int, default=20261129)
    add('--rounds', type=int, default=3)
    add('--lag-seconds', type=float, help='seconds of commits per rate per '
        'lag session (default: 10, small preset 3)')
    add('--read-seconds', type=float, help='seconds per read and per '
        'commit measurement (default: 5, small preset 2)')
    add('--blob-mb', type=int, default=memory.BLOB_MB,
        help='size of the memory test blob (default 1024)')
    names = [phase.NAME for phase in PHASES]
    add('--phases', default=','.join(names),
        help='comma-separated subset of %s' % ', '.join(names))
    add('--no-reference-lag', action='store_true',
        help='skip the zc.zrs -> zc.zrs lag reference')
    add('--lag-probe', action='store_true', help='diagnostic: also follow '
        'each lag primary\'s stream with a bare consumer and note when each '
        'commit left it (adds a secondary to the primary)')
    add('--primaries-on-disk', action='store_true', help='keep the '
        'primaries\' files in the run directory instead of on tmpfs '
        '(/dev/shm)')
    add('--run-dir', help='diagnostic: put the run directory (the '
        'replicas\' files, the logs) here instead of var/bench/run-STAMP; '
        'on tmpfs, where an fsync costs nothing, the lag shows what the '
        'disk adds')
    add('--json', help='also write the results here')
    add('--keep', action='store_true',
        help='keep the data files of the run directory')
    args = parser.parse_args(argv)
    for name in ('lag_seconds', 'read_seconds'):
        if getattr(args, name) is None:
            setattr(args, name, PRESETS[args.preset][name])
    args.phase_names = [p.strip() for p in args.phases.split(',')
                        if p.strip()]
    unknown = set(args.phase_names) - set(names)
    if unknown:
        parser.error('unknown phase(s): %s' % ', '.join(sorted(unknown)))
    return args


def environment():
    """Versions, git revision and machine, for the JSON."""
    def version(name):
        with contextlib.suppress(Exception):
            return metadata.version(name)

    def git(*args):
        with contextlib.suppress(Exception):
            return subprocess.run(('git',) + args, cwd=ROOT, text=True,
                                  capture_output=True,
                                  timeout=10).stdout.strip()
    dirty = git('status', '--porcelain')
    return dict(python=platform.python_version(), cpus=os.cpu_count(),
                machine=platform.machine(), kernel=platform.release(),
                load_average=os.getloadavg(),
                git=git('rev-parse', '--short', 'HEAD'),
                git_dirty=None if dirty is None else bool(dirty),
                zrsd=version('zrsd'), ZODB=version('ZODB'),
                ZEO=version('ZEO'), zc_zrs=version('zc.zrs'))


def run_phases(args, workload_path, meta, directory=None,
               blob_workload=None):
    """(the Run, the raw results) of the chosen phases on the workload
    (and `blob_workload`: (path, metadata), default the preset's)."""
    run = Run(args, workload_path, meta, directory, blob_workload)
    log('run directory %s%s' % (
        os.path.relpath(run.dir, ROOT),
        ', primaries in %s' % run.primary_dir if run.primary_dir else ''))
    results = dict(started=time.strftime('%Y-%m-%d %H:%M:%S'),
                   args=vars(args), workload=meta,
                   environment=environment(), run_dir=run.dir,
                   primary_dir=run.primary_dir, fsync_ms=fsync_probe(run.dir),
                   load=[('start',) + machine_load()])
    try:
        for phase in PHASES:
            if phase.NAME in args.phase_names:
                results[phase.NAME] = phase.run_phase(run)
                results['load'].append((phase.NAME,) + machine_load())
    finally:
        run.close()
    if run.blob_source is not None:
        results['blob_workload'] = run.blob_source[1]
    return run, results


def write_results(results, stamp, extra_path=None):
    """var/bench/results-STAMP.json (and `extra_path`); every commit of the
    lag sessions goes to a compact file of its own."""
    samples = {'%s-%s-%s' % (pair, run['round'], rate): res.pop('samples', [])
               for pair, runs in results.get('lag', {}).items()
               for run in runs for rate, res in run.get('rates', {}).items()}
    path = os.path.join(BENCH_DIR, 'results-%s.json' % stamp)
    if samples:
        results['lag_samples_file'] = path[:-5] + '-lag-samples.json'
        with open(results['lag_samples_file'], 'w') as f:
            json.dump(dict(
                columns=['seconds since the first commit', 'lag ms',
                         'loaded ms', 'commit duration ms',
                         'primary sent ms (--lag-probe)'],
                sessions=samples), f, separators=(',', ':'))
    for out in [path] + ([extra_path] if extra_path else []):
        with open(out, 'w') as f:
            json.dump(results, f, indent=1, default=bytes.hex)
        log('results written to %s' % out)


def main(argv=None):
    """`scripts/bench.py`: run, print the tables, write the JSON; 0."""
    args = parse_args(argv)
    # Threads of this process (lag writers) hand the GIL over sooner.
    sys.setswitchinterval(0.0005)
    started = time.monotonic()
    run, results = run_phases(args, *workload(args.preset, args.seed),
                              directory=args.run_dir)
    results['seconds'] = round(time.monotonic() - started, 1)
    s = results['summary'] = summarise(results, results['workload'])
    sys.stdout.write(report(results, s, results['workload'], args) + '\n')
    sys.stdout.write('total %.0f s\n' % results['seconds'])
    write_results(results, run.stamp, args.json)
    return 0
