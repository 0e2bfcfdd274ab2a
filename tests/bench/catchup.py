"""1. Catch-up: from an empty replica to the primary's last tid; the rows
(a)-(e) of docs/BENCHMARK.md's catch-up table: three pairs of real replicas
over ZRS, ZODB's copyTransactionsFrom, and a bare consumer of the zc.zrs
primary's stream; and (f)-(h): a zrsd replica that copies its zrsd
primary's file (zrsd-seed1, `copy-file`) into an empty file, onto a file
holding the first half of the workload, and with blobs.
"""
import collections
import functools
import os
import shutil
import struct
import time

import ZODB.FileStorage
from ZODB.FileStorage.format import TRANS_HDR_LEN

from .measure import (
    MB, attempt, cpu_seconds, fmt_range, loads_revision, log, median,
    rotated, summaries, summary, wait_served)
from .nodes import (
    PRECISE_LOG_FORMAT, ZCZRS_TO_ZCZRS, ZCZRS_TO_ZRSD, ZRSD_BLOBS,
    ZRSD_TO_ZRSD, ZrsdNode, remove_data_files)
from .stream import bare_stream

NAME = 'catchup'
TITLE = '1. Catch-up: empty replica -> last tid served by its ZEO server'


def log_time(text, needle, index=0):
    """time.monotonic() of the first (`index`: the index-th) log line
    containing `needle` (the line starts with a `%(created)f` time stamp)."""
    line = [line for line in text.splitlines() if needle in line][index]
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


# A zrsd primary's log line for each secondary that connects (a copy's
# first); the replica's lines of its copy and of its storage once open.
PRIMARY_CONNECTED = ': secondary connected'
COPY_STARTED = "copying the primary's file from"
COPY_DONE = "of the primary's file in"
OPENED = ': replica of '
SEED_LINES = '  copy-file-minimum 0\n'     # copy whatever the length


def prefix_length(path, transactions):
    """The length of the first `transactions` transactions of the
    FileStorage at `path` (a transaction boundary)."""
    pos = 4
    with open(path, 'rb') as f:
        for _ in range(transactions):
            header = os.pread(f.fileno(), TRANS_HDR_LEN, pos)
            pos += struct.unpack('>Q', header[8:16])[0] + 8
    return pos


def make_prefix(source, target, transactions):
    """`target`: the first `transactions` transactions of the FileStorage
    `source`, and the .index that FileStorage writes when it closes (a
    replica stopped there); returns its length."""
    length = prefix_length(source, transactions)
    with open(source, 'rb') as src, open(target, 'wb') as dst:
        left = length
        while left:
            block = src.read(min(left, 16 << 20))
            dst.write(block)
            left -= len(block)
    ZODB.FileStorage.FileStorage(target).close()
    return length


def blob_files(blob_dir):
    """(count, bytes) of the committed blob files under `blob_dir`."""
    count = size = 0
    for directory, _, files in os.walk(blob_dir):
        for name in files:
            if name.endswith('.blob'):
                count += 1
                size += os.path.getsize(os.path.join(directory, name))
    return count, size


def seed_catchup(kind, run, directory, keep):
    """A zrsd replica copies its zrsd primary's file (zrsd-seed1): `kind`
    'new' (an empty replica, copy-file new), 'half' (its file holds the
    first half of the workload's transactions, with its index, copy-file
    on) or 'blobs' (an empty replica with a blob-dir, the blob workload).
    Timed from the primary's log line for the copy's connection until the
    replica's ZEO server serves the last tid; `split` gives the parts, from
    the replica's log.  `mb` is what it had to fetch: the file after its
    own, and the blob files."""
    blobs = kind == 'blobs'
    if blobs:
        path, meta = run.blob_workload()
        primary = run.primary(ZRSD_BLOBS)
    else:
        path, meta = run.workload_path, run.meta
        primary = run.primary('zrsd')
    last_tid, last_oid = (bytes.fromhex(meta[key])
                          for key in ('last_tid', 'last_oid'))
    replica = run.own(ZrsdNode(
        directory, 'replica', upstream=primary.repl_port, blobs=blobs,
        copy_file='on' if kind == 'half' else 'new', zrs_lines=SEED_LINES,
        log_format=PRECISE_LOG_FORMAT))
    have = 0
    if kind == 'half':
        have = make_prefix(path, replica.fs_path, meta['transactions'] // 2)
    fetch = meta['file_bytes'] - have + meta.get('blob_bytes', 0)
    seen = primary.log().count(PRIMARY_CONNECTED)
    primary_cpu = cpu_seconds(primary.pid)
    launched = time.monotonic()
    try:
        replica.launch()
        deadline = time.monotonic() + 60
        while primary.log().count(PRIMARY_CONNECTED) <= seen:
            if not replica.running() or time.monotonic() > deadline:
                raise RuntimeError('%s did not connect to its primary; see '
                                   '%s' % (replica.name, replica.log_path))
            time.sleep(0.005)
        start_cpu = cpu_seconds(replica.pid)
        done = wait_served(replica, last_tid, run.catchup_timeout)
        replica_cpu = cpu_seconds(replica.pid) - start_cpu
        primary_cpu = cpu_seconds(primary.pid) - primary_cpu
        connected = log_time(primary.log(), PRIMARY_CONNECTED, seen)
        client = replica.client(wait_timeout=30)
        try:
            loaded = loads_revision(client, last_oid, last_tid)
        finally:
            client.close()
    except BaseException:
        replica.close()
        raise
    replica.stop()
    text = replica.log()
    copied = COPY_DONE in text
    result = dict(seconds=done - connected, startup=connected - launched,
                  replica_cpu=replica_cpu, primary_cpu=primary_cpu,
                  mb=fetch / MB, prefix_bytes=have, copied=copied,
                  transactions=meta['transactions'] - (
                      meta['transactions'] // 2 if have else 0),
                  file_bytes=os.path.getsize(replica.fs_path))
    if copied:
        times = [log_time(text, needle) for needle in (
            COPY_STARTED, COPY_DONE, OPENED)] + [done]
        # Handshake (and the proof of a prefix), copy, opening the file
        # (FileStorage's index of what came), ZEO and ZRS until served.
        result['split'] = dict(zip(
            ('handshake', 'copy', 'open', 'serve'),
            [times[0] - connected] + [b - a for a, b in zip(times, times[1:])]
        ))
    if blobs:
        result['blob_files'] = blob_files(replica.blob_dir)
        copied = copied and result['blob_files'] == (
            meta['blobs'], meta['blob_bytes'])
    result['verified'] = loaded and copied and \
        result['file_bytes'] == meta['file_bytes']
    remove_data_files(directory)
    shutil.rmtree(directory + '/replica.blobs', ignore_errors=True)
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
A, B, C, D, E, F, G, H = MEASUREMENTS = (
    Measurement('a', '(a) zc.zrs primary -> zrsd replica',
                functools.partial(replica_catchup, ZCZRS_TO_ZRSD)),
    Measurement('b', '(b) zrsd primary -> zrsd replica',
                functools.partial(replica_catchup, ZRSD_TO_ZRSD)),
    Measurement('c', '(c) zc.zrs primary -> zc.zrs secondary',
                functools.partial(replica_catchup, ZCZRS_TO_ZCZRS)),
    Measurement('d', '(d) copyTransactionsFrom (fsync)', copy_catchup),
    Measurement('e', '(e) zc.zrs primary -> bare stream',
                bare_stream_catchup),
    Measurement('f', '(f) zrsd -> empty replica, file copy',
                functools.partial(seed_catchup, 'new')),
    Measurement('g', '(g) zrsd -> half replica, file copy',
                functools.partial(seed_catchup, 'half')),
    Measurement('h', '(h) zrsd -> empty replica, copy, blobs',
                functools.partial(seed_catchup, 'blobs')))
# The rows that copy the file (zrsd-seed1).
SEEDS = (F, G, H)
# The rate ratios reported, x/y = rate(x) / rate(y) per round, a rate being
# the MB a row fetches (`mb`: the workload's file, but for (g) its second
# half and for (h) the blob workload's file and blobs) over its seconds.
RATIOS = ((A, E), (B, C), (A, C), (B, E), (B, D), (F, C), (G, C), (H, C))
TARGETS = (('catchup_a_over_e', 'a/e',
            'catch-up rate zc.zrs->zrsd / bare zc.zrs stream'),
           ('catchup_b_over_c', 'b/c',
            'catch-up rate zrsd->zrsd / zc.zrs->zc.zrs'),
           ('catchup_f_over_c', 'f/c',
            'copy rate, empty replica / zc.zrs->zc.zrs'),
           ('catchup_g_over_c', 'g/c',
            'copy rate, half replica / zc.zrs->zc.zrs'))
# MB/s targets: (target name, row, label).
RATE_TARGETS = (('catchup_f_mb_s', F, 'copy into an empty replica, MB/s'),
                ('catchup_g_mb_s', G, 'copy onto a half replica, MB/s'),
                ('catchup_h_mb_s', H, 'copy with blobs, MB/s (file+blobs)'))


def rate_ratios(first, second):
    """Per-round ratios of the rates (`mb` / seconds) of two rows."""
    return summary([(a['mb'] / a['seconds']) / (b['mb'] / b['seconds'])
                    for a, b in zip(first, second)
                    if a.get('seconds') and b.get('seconds')])


def run_phase(run):
    """{key: [a result per round]}, in an order rotated per round."""
    out = {m.key: [] for m in MEASUREMENTS}
    rounds = run.args.rounds
    run.blob_workload()     # generated (once) before anything is timed
    for r in range(rounds):
        for m in rotated(MEASUREMENTS, r):
            result = attempt('catch-up %s round %d' % (m.key, r + 1),
                             m.measure, run, run.path('catchup', '%s-%d' % (
                                 m.key, r)), r == rounds - 1)
            result['round'] = r + 1
            result.setdefault('mb', run.meta['file_bytes'] / MB)
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
        timed = [run for run in runs if 'seconds' in run]
        mb = timed[0].get('mb', meta['file_bytes'] / MB)
        transactions = timed[0].get('transactions', meta['transactions'])
        row.update(txn_per_s=transactions / sec['median'], mb=mb,
                   mb_per_s=mb / sec['median'],
                   mb_per_s_rounds=summary([run.get('mb', mb) /
                                            run['seconds'] for run in timed]),
                   verified=all(run.get('verified') for run in timed),
                   copied=all(run.get('copied', True) for run in timed),
                   errors=[run['error'] for run in runs if 'error' in run])
        if any('split' in run for run in timed):
            row['split'] = {part: summary([run['split'][part]
                                           for run in timed
                                           if 'split' in run])
                            for part in ('handshake', 'copy', 'open',
                                         'serve')}
    ratios = s['catchup_ratios'] = {
        '%s/%s' % (x.key, y.key): rate_ratios(catchup[x.key], catchup[y.key])
        for x, y in RATIOS if x.key in catchup and y.key in catchup}
    for name, ratio, label in TARGETS:
        targets.add_stat(name, label, ratios.get(ratio), 'min')
    for name, m, label in RATE_TARGETS:
        targets.add_stat(name, label,
                         rows.get(m.key, {}).get('mb_per_s_rounds'), 'min')


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
            ('' if row['verified'] else '  NOT VERIFIED') +
            ('' if row['copied'] else ' (NO FILE COPY)')))
    p('   rate ratios: %s' % ', '.join(
        '(%s)/(%s) %s' % (x.key, y.key, fmt_range(
            s['catchup_ratios'].get('%s/%s' % (x.key, y.key))))
        for x, y in RATIOS))
    p('   (f)-(h): MB fetched (file after the replica\'s, and blob files) '
      'and where the seconds went (medians; handshake includes the proof '
      'of a prefix, open is FileStorage indexing what came, serve is ZEO '
      'and ZRS until the last tid is served):')
    for m in SEEDS:
        row = s['catchup'].get(m.key) or {}
        split = row.get('split')
        if not split:
            continue
        p('   %-42s %6.1f MB: handshake %s, copy %s (%.0f MB/s), open %s, '
          'serve %s' % (
              m.label, row['mb'], median(split['handshake']),
              median(split['copy']),
              row['mb'] / split['copy']['median']
              if split['copy'] and split['copy']['median'] else 0,
              median(split['open']), median(split['serve'])))
