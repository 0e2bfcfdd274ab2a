"""1. Catch-up: from an empty replica to the primary's last tid; the rows
(a)-(e) of README's catch-up table: three pairs of real replicas, ZODB's
copyTransactionsFrom, and a bare consumer of the zc.zrs primary's stream.
"""
import collections
import functools
import os
import time

import ZODB.FileStorage

from .measure import (
    MB, attempt, cpu_seconds, fmt_range, loads_revision, log, median,
    ratio_rounds, rotated, summaries, wait_served)
from .nodes import (
    ZCZRS_TO_ZCZRS, ZCZRS_TO_ZRSD, ZRSD_TO_ZRSD, ZrsdNode, remove_data_files)
from .stream import bare_stream

NAME = 'catchup'
TITLE = '1. Catch-up: empty replica -> last tid served by its ZEO server'


def log_time(text, needle):
    """time.monotonic() of the first log line containing `needle` (the
    line starts with a `%(created)f` time stamp)."""
    line = next(line for line in text.splitlines() if needle in line)
    return float(line.split(None, 1)[0]) - (time.time() - time.monotonic())


def cpu_after_log(node, needle, timeout=60):
    """CPU seconds `node` used when `needle` appeared in its log (polled
    every 5 ms): its start-up cost."""
    deadline = time.monotonic() + timeout
    while needle not in node.log():
        if not node.running() or time.monotonic() > deadline:
            raise RuntimeError('%s did not log %r; see %s' % (
                node.name, needle, node.log_path))
        time.sleep(0.005)
    return cpu_seconds(node.pid)


def launch_replica(replica):
    """Start a replica without waiting for its data (a zrsd one not even
    for ZEO); returns its log line saying it connected to its primary."""
    if isinstance(replica, ZrsdNode):
        replica.launch()
        return 'connected (zrs'
    replica.start()
    return ': Connected'


def replica_catchup(pair, run, directory, keep):
    """A replica of `pair` catches up: timed from its log line saying it
    connected to its primary until its ZEO server serves the last tid;
    then a ZEO client checks a load.  The last round's is kept."""
    primary = run.primary(pair.primary)
    replica = run.new_replica(pair, directory)
    primary_cpu = cpu_seconds(primary.pid)
    launched = time.monotonic()
    try:
        connected_line = launch_replica(replica)
        start_cpu = cpu_after_log(replica, connected_line)
        done = wait_served(replica, run.last_tid, run.catchup_timeout)
        replica_cpu = cpu_seconds(replica.pid) - start_cpu
        primary_cpu = cpu_seconds(primary.pid) - primary_cpu
        connected = log_time(replica.log(), connected_line)
        client = replica.client(wait_timeout=30)
        try:
            loaded = loads_revision(client, run.last_oid, run.last_tid)
        finally:
            client.close()
    except BaseException:
        replica.close()     # it must not replicate during what follows
        raise
    replica.stop()
    result = dict(seconds=done - connected, startup=connected - launched,
                  verified=loaded, replica_cpu=replica_cpu,
                  primary_cpu=primary_cpu,
                  file_bytes=os.path.getsize(replica.fs_path))
    if keep:
        run.kept[pair.key] = replica
    else:
        remove_data_files(directory)
    return result


def copy_catchup(run, directory, keep):
    """ZODB's copyTransactionsFrom into a new FileStorage, in this process
    (FileStorage fsyncs every transaction)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'copy.fs')
    source = ZODB.FileStorage.FileStorage(run.workload_path, read_only=True)
    target = ZODB.FileStorage.FileStorage(path, create=True)
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
    result = dict(seconds=done - started, verified=verified, replica_cpu=cpu,
                  file_bytes=os.path.getsize(path))
    remove_data_files(directory)
    return result


def bare_stream_catchup(run, directory, keep):
    """The zc.zrs primary streams its whole history to a bare consumer in
    this process (stream.bare_stream)."""
    primary = run.primary('zczrs')
    primary_cpu = cpu_seconds(primary.pid)
    result = bare_stream(primary.repl_port, run.last_tid,
                         timeout=run.catchup_timeout)
    result['primary_cpu'] = cpu_seconds(primary.pid) - primary_cpu
    return result


# `measure(run, directory, keep)`: keep the replica (of the last round).
Measurement = collections.namedtuple('Measurement', 'key label measure')
A, B, C, D, E = MEASUREMENTS = (
    Measurement('a', '(a) zc.zrs primary -> zrsd replica',
                functools.partial(replica_catchup, ZCZRS_TO_ZRSD)),
    Measurement('b', '(b) zrsd primary -> zrsd replica',
                functools.partial(replica_catchup, ZRSD_TO_ZRSD)),
    Measurement('c', '(c) zc.zrs primary -> zc.zrs secondary',
                functools.partial(replica_catchup, ZCZRS_TO_ZCZRS)),
    Measurement('d', '(d) copyTransactionsFrom (fsync)', copy_catchup),
    Measurement('e', '(e) zc.zrs primary -> bare stream',
                bare_stream_catchup))
# The rate ratios reported, x/y = time(y) / time(x) per round.
RATIOS = ((A, E), (B, C), (A, C), (B, E), (B, D))
TARGETS = (('catchup_a_over_e', 'a/e',
            'catch-up rate zc.zrs->zrsd / bare zc.zrs stream'),
           ('catchup_b_over_c', 'b/c',
            'catch-up rate zrsd->zrsd / zc.zrs->zc.zrs'))


def run_phase(run):
    """{key: [a result per round]}, in an order rotated per round."""
    out = {m.key: [] for m in MEASUREMENTS}
    rounds = run.args.rounds
    for r in range(rounds):
        for m in rotated(MEASUREMENTS, r):
            result = attempt('catch-up %s round %d' % (m.key, r + 1),
                             m.measure, run, run.path('catchup', '%s-%d' % (
                                 m.key, r)), r == rounds - 1)
            result['round'] = r + 1
            out[m.key].append(result)
            if 'seconds' in result:
                log('catch-up round %d %-42s %7.2f s%s' % (
                    r + 1, m.label, result['seconds'],
                    '' if result.get('verified') else '  (NOT VERIFIED)'))
    return out


def summarise(catchup, s, targets, meta):
    """The catch-up rows, ratios and targets of the summary `s`."""
    rows = s['catchup'] = {}
    for key, runs in catchup.items():
        row = rows[key] = summaries(runs, ('seconds', 'startup',
                                           'replica_cpu', 'primary_cpu'))
        sec = row['seconds']
        if sec is None:
            rows[key] = dict(errors=[run.get('error') for run in runs])
            continue
        row.update(txn_per_s=meta['transactions'] / sec['median'],
                   mb_per_s=meta['file_bytes'] / MB / sec['median'],
                   verified=all(run.get('verified') for run in runs
                                if 'seconds' in run),
                   errors=[run['error'] for run in runs if 'error' in run])
    ratios = s['catchup_ratios'] = {
        '%s/%s' % (x.key, y.key): ratio_rounds(
            catchup[x.key], catchup[y.key], 'seconds', invert=True)
        for x, y in RATIOS}
    for name, ratio, label in TARGETS:
        targets.add_stat(name, label, ratios[ratio], 'min')


def report(s, catchup, p):
    """The catch-up table (lines passed to `p`)."""
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
            row['mb_per_s'], median(row['startup'], 1),
            median(row['replica_cpu'], 1),
            '' if row['verified'] else '  NOT VERIFIED'))
    p('   rate ratios: %s' % ', '.join(
        '(%s)/(%s) %s' % (x.key, y.key, fmt_range(
            s['catchup_ratios']['%s/%s' % (x.key, y.key)]))
        for x, y in RATIOS))
