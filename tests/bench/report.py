"""The summary of a run (medians, ratios, targets) and the text printed on
stdout: a header on the machine and the workload, each phase's table, the
targets."""
import os

from . import catchup, lag, memory, reads
from .figures import RATIO_TARGETS, Targets, fmt
from .measure import MB

PHASES = (catchup, lag, reads, memory)


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
    p('machine: %d CPUs; after each phase, 1-minute load average / CPU '
      'pressure (%% of time tasks waited for a CPU, 60 s): %s' % (
          os.cpu_count(), ', '.join(
              '%s %.1f/%s' % (name, load, '-' if pressure is None
                              else '%.0f%%' % pressure)
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
            digits = 3 if t['name'] in RATIO_TARGETS else 2
            p('   %-52s %10s  target %-7s %-8s worst %s' % (
                t['label'], fmt(t['value'], digits), t['target'],
                {True: 'met', False: 'NOT MET', None: '-'}[t['met']],
                fmt(t['worst'], digits)))
    return '\n'.join(out + [''])
