"""The summary of a run (medians, ratios, targets) and the text printed on
stdout: a header on the machine and the workload, each phase's table, the
targets."""
import os

from . import catchup, lag, memory, reads
from .figures import RATIO_TARGETS, Targets, fmt
from .measure import MB


def summarise(results, meta):
    """Median/min/max of every figure, ratios per round, targets."""
    s = {}
    targets = Targets()
    if results.get('catchup'):
        catchup.summarise(results['catchup'], meta, s, targets)
    if results.get('lag'):
        lag.summarise(results['lag'], s, targets)
    if results.get('reads'):
        reads.summarise(results['reads'], s, targets)
    if results.get('memory'):
        memory.summarise(results['memory'], s, targets)
    s['targets'] = list(targets)
    return s


def header(results, meta, args, p):
    """What ran where: preset, workload, machine load, fsync latency."""
    p('')
    p('zrsd benchmark: preset %s, seed %d, %d round(s), %s' % (
        args.preset, args.seed, args.rounds, results['started']))
    p('workload: %d transactions, %d records, %d objects, %.1f MB '
      '(%d with extensions, %d of 5 MB)' % (
          meta['transactions'], meta['records'], meta['objects'],
          meta['file_bytes'] / MB, meta['extension_transactions'],
          meta['big_transactions']))
    p('machine: %d CPUs; after each phase, 1-minute load average / CPU '
      'pressure (%% of time tasks waited for a CPU, 60 s): %s' % (
          os.cpu_count(), ', '.join(
              '%s %.1f/%s' % (name, load,
                              '-' if pressure is None
                              else '%.0f%%' % pressure)
              for name, load, pressure in results['load'])))
    f = results['fsync_ms']
    p('fsync of a small append on the replicas\' disk (ms): p50 %.2f, '
      'p90 %.2f, p99 %.2f, max %.2f' % (f['p50'], f['p90'], f['p99'],
                                        f['max']))
    p('primaries\' files: %s' % (
        'tmpfs (%s)' % results['primary_dir'] if results['primary_dir']
        else 'on disk, in the run directory'))
    p('figures: median (min-max) over rounds; ratios are computed per round')


def report(results, s, meta, args):
    """The text of the results (for stdout)."""
    out = []
    p = out.append
    header(results, meta, args, p)
    if 'catchup' in s:
        catchup.report(s, p)
    if 'lag' in s:
        lag.report(s, p)
    if 'reads' in s:
        reads.report(s, p)
    if results.get('memory'):
        memory.report(results['memory'], p)
    if s['targets']:
        p('')
        p('Targets (median over rounds; "worst" is the worst round)')
        for t in s['targets']:
            digits = 3 if t['name'] in RATIO_TARGETS else 2
            p('   %-52s %10s  target %-7s %-8s worst %s' % (
                t['label'], fmt(t['value'], digits), t['target'],
                {True: 'met', False: 'NOT MET', None: '-'}[t['met']],
                fmt(t['worst'], digits)))
    p('')
    return '\n'.join(out)
