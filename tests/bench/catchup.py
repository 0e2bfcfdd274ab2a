"""1. Catch-up: from an empty replica to the primary's last tid.

Five measurements, the rows (a)-(e) of README's catch-up table: three
pairs of real replicas, ZODB's copyTransactionsFrom, and a bare consumer of
the zc.zrs primary's stream.  The replicas of the last round are kept
(stopped) for the lag and read tests.
"""
import os
import time

import ZODB.FileStorage

from .figures import fmt, fmt_range, ratio_rounds, summary
from .measure import (
    MB, check_alive, cpu_after_log, cpu_seconds, failed, log, log_time,
    verify_load, wait_served)
from .nodes import (
    ZCZRS_TO_ZCZRS, ZCZRS_TO_ZRSD, ZRSD_TO_ZRSD, remove_data_files)
from .stream import bare_stream


class ReplicaCatchUp:
    """A replica of `pair` catches up with its primary: timed from the
    replica's log line saying it connected to the primary until its ZEO
    server serves the last tid; then a ZEO client checks a load."""

    keeps_replica = True    # the last round's serves the lag and reads

    def __init__(self, pair, label):
        self.pair = pair
        self.key = pair.key
        self.label = label

    def measure(self, run, directory, keep):
        primary = run.primary(self.pair.primary)
        replica = run.new_replica(self.pair, directory)
        primary_cpu = cpu_seconds(primary.process.pid)
        launched = time.monotonic()
        try:
            connected_line = run.launch_replica(replica)
            start_cpu = cpu_after_log(replica.process, connected_line)
            done = wait_served(replica.zeo_port, run.last_tid,
                               check_alive(replica.process),
                               timeout=run.catchup_timeout())
            replica_cpu = cpu_seconds(replica.process.pid) - start_cpu
            primary_cpu = cpu_seconds(primary.process.pid) - primary_cpu
            connected = log_time(replica.log(), connected_line)
            loaded = verify_load(replica.zeo_port, run.last_oid,
                                 run.last_tid)
        except BaseException:
            replica.close()     # it must not replicate during what follows
            raise
        replica.stop()
        if keep:
            run.kept[self.key] = replica
        return dict(seconds=done - connected, startup=connected - launched,
                    verified=loaded, replica_cpu=replica_cpu,
                    primary_cpu=primary_cpu,
                    file_bytes=os.path.getsize(replica.fs_path))


class CopyCatchUp:
    """ZODB's copyTransactionsFrom into a new FileStorage, in this process
    (FileStorage fsyncs every transaction)."""

    keeps_replica = False
    key = 'd'
    label = '(d) copyTransactionsFrom (fsync)'

    def measure(self, run, directory, keep):
        os.makedirs(directory, exist_ok=True)
        source = ZODB.FileStorage.FileStorage(run.workload_path,
                                              read_only=True)
        target = ZODB.FileStorage.FileStorage(
            os.path.join(directory, 'copy.fs'), create=True)
        try:
            cpu = time.process_time()
            started = time.monotonic()
            target.copyTransactionsFrom(source)
            done = time.monotonic()
            cpu = time.process_time() - cpu
            verified = target.lastTransaction() == run.last_tid
        finally:
            target.close()
            source.close()
        return dict(seconds=done - started, verified=verified,
                    replica_cpu=cpu,
                    file_bytes=os.path.getsize(
                        os.path.join(directory, 'copy.fs')))


class BareStreamCatchUp:
    """The zc.zrs primary streams its whole history to a bare consumer in
    this process (stream.bare_stream)."""

    keeps_replica = False
    key = 'e'
    label = '(e) zc.zrs primary -> bare stream'

    def measure(self, run, directory, keep):
        primary = run.primary('zczrs')
        primary_cpu = cpu_seconds(primary.process.pid)
        result = bare_stream(primary.repl_port, run.last_tid,
                             timeout=run.catchup_timeout())
        result['primary_cpu'] = cpu_seconds(primary.process.pid) - primary_cpu
        return result


ZCZRS_ZRSD = ReplicaCatchUp(ZCZRS_TO_ZRSD,
                            '(a) zc.zrs primary -> zrsd replica')
ZRSD_ZRSD = ReplicaCatchUp(ZRSD_TO_ZRSD, '(b) zrsd primary -> zrsd replica')
ZCZRS_ZCZRS = ReplicaCatchUp(ZCZRS_TO_ZCZRS,
                             '(c) zc.zrs primary -> zc.zrs secondary')
COPY = CopyCatchUp()
BARE_STREAM = BareStreamCatchUp()
MEASUREMENTS = (ZCZRS_ZRSD, ZRSD_ZRSD, ZCZRS_ZCZRS, COPY, BARE_STREAM)

# The rate ratios reported, x/y = time(y) / time(x) per round.
RATIOS = ((ZCZRS_ZRSD, BARE_STREAM), (ZRSD_ZRSD, ZCZRS_ZCZRS),
          (ZCZRS_ZRSD, ZCZRS_ZCZRS), (ZRSD_ZRSD, BARE_STREAM),
          (ZRSD_ZRSD, COPY))


def run_catchup(run, rounds, results):
    """Every measurement in each round, in an order rotated per round;
    results['catchup'][key] gets one result dict per round."""
    out = results['catchup'] = {m.key: [] for m in MEASUREMENTS}
    order = list(MEASUREMENTS)
    for r in range(rounds):
        for m in order[r % len(order):] + order[:r % len(order)]:
            keep = m.keeps_replica and r == rounds - 1
            directory = run.path('catchup', '%s-%d' % (m.key, r))
            try:
                result = m.measure(run, directory, keep)
                if not keep:
                    remove_data_files(directory)
            except Exception as exc:
                result = failed('catch-up %s round %d' % (m.key, r + 1), exc)
            result['round'] = r + 1
            out[m.key].append(result)
            if 'seconds' in result:
                log('catch-up round %d %-42s %7.2f s%s' % (
                    r + 1, m.label, result['seconds'],
                    '' if result.get('verified') else '  (NOT VERIFIED)'))


def summarise(catchup, meta, s, targets):
    """The catch-up rows, ratios and targets of the summary `s`."""
    mb = meta['file_bytes'] / MB
    rows = {}
    for key, runs in catchup.items():
        sec = summary([run.get('seconds') for run in runs])
        if sec is None:
            rows[key] = dict(errors=[run.get('error') for run in runs])
            continue
        rows[key] = dict(
            seconds=sec, txn_per_s=meta['transactions'] / sec['median'],
            mb_per_s=mb / sec['median'],
            startup=summary([run.get('startup') for run in runs]),
            replica_cpu=summary([run.get('replica_cpu') for run in runs]),
            primary_cpu=summary([run.get('primary_cpu') for run in runs]),
            verified=all(run.get('verified') for run in runs
                         if 'seconds' in run),
            errors=[run['error'] for run in runs if 'error' in run])
    s['catchup'] = rows
    ratios = s['catchup_ratios'] = {
        '%s/%s' % (x.key, y.key): ratio_rounds(
            catchup[x.key], catchup[y.key], 'seconds', invert=True)
        for x, y in RATIOS}
    for name, x, y, label in (
            ('catchup_a_over_e', ZCZRS_ZRSD, BARE_STREAM,
             'catch-up rate zc.zrs->zrsd / bare zc.zrs stream'),
            ('catchup_b_over_c', ZRSD_ZRSD, ZCZRS_ZCZRS,
             'catch-up rate zrsd->zrsd / zc.zrs->zc.zrs')):
        ratio = ratios['%s/%s' % (x.key, y.key)]
        targets.add(name, label, ratio and ratio['median'],
                    ratio and ratio['min'])


def report(s, p):
    """The catch-up table (lines passed to `p`)."""
    p('')
    p('1. Catch-up: empty replica -> last tid served by its ZEO server')
    p('   %-42s %-22s %9s %8s %8s %8s' % (
        '', 'seconds', 'txn/s', 'MB/s', 'startup', 'CPU s'))
    for m in MEASUREMENTS:
        row = s['catchup'].get(m.key)
        if not row or 'seconds' not in row:
            p('   %-42s FAILED: %s' % (m.label, '; '.join(
                e for e in (row or {}).get('errors', []) if e)))
            continue
        p('   %-42s %-22s %9.0f %8.1f %8s %8s%s' % (
            m.label, fmt_range(row['seconds']), row['txn_per_s'],
            row['mb_per_s'],
            fmt(row['startup'] and row['startup']['median'], 1),
            fmt(row['replica_cpu'] and row['replica_cpu']['median'], 1),
            '' if row['verified'] else '  NOT VERIFIED'))
    p('   rate ratios: %s' % ', '.join(
        '(%s)/(%s) %s' % (x.key, y.key,
                          fmt_range(s['catchup_ratios'][
                              '%s/%s' % (x.key, y.key)]))
        for x, y in RATIOS))
