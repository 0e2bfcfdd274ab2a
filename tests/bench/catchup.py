"""1. Catch-up: from an empty replica to the primary's last tid, the rows
(a)-(h) of docs/BENCHMARK.md's catch-up table."""
import collections
import functools
import os
import shutil
import struct
import time
from contextlib import closing

import ZODB.FileStorage
from ZODB.FileStorage.format import TRANS_HDR_LEN
from ZODB.utils import z64

from .measure import (
    MB, attempt, cpu_seconds, fmt_range, loads_revision, log, median, poll,
    rotated, summaries, summary, wait_served)
from .nodes import (
    PRECISE_LOG_FORMAT, ZCZRS_TO_ZCZRS, ZCZRS_TO_ZRSD, ZRSD_BLOBS,
    ZRSD_TO_ZRSD, ZrsdNode, remove_data_files)
from .stream import StreamReader, connect

NAME = 'catchup'
TITLE = '1. Catch-up: empty replica -> last tid served by its ZEO server'
# A zrsd primary's log line for each secondary that connects (a copy's
# first); the replica's lines of its copy and of its storage once open.
PRIMARY_CONNECTED = ': secondary connected'
COPY_STARTED = "copying the primary's file from"
COPY_DONE = "of the primary's file in"
OPENED = ': replica of '
SEED_LINES = '  copy-file-minimum 0\n'     # copy whatever the length
# The parts of a copy's seconds (see `report`).
SPLIT = ('handshake', 'copy', 'open', 'serve')


def log_time(text, needle, index=0):
    """time.monotonic() of the index-th log line containing `needle` (the
    line starts with a `%(created)f` time stamp)."""
    line = [line for line in text.splitlines() if needle in line][index]
    return float(line.split(None, 1)[0]) - (time.time() - time.monotonic())


def timed_catchup(run, primary, replica, log_of, needle, meta):
    """(result, time connected, time served) of `replica`, from the next
    line `needle` in `log_of()` until it serves the last tid of `meta`;
    then a ZEO client checks a load."""
    last_tid, last_oid = (bytes.fromhex(meta[key])
                          for key in ('last_tid', 'last_oid'))
    seen = log_of().count(needle)
    primary_cpu = cpu_seconds(primary.pid)
    launched = time.monotonic()
    try:
        replica.launch() if isinstance(replica, ZrsdNode) else replica.start()
        poll(replica, lambda: log_of().count(needle) > seen, 60,
             'logging %r' % needle, 0.005)
        start_cpu = cpu_seconds(replica.pid)
        done = wait_served(replica, last_tid, run.catchup_timeout)
        replica_cpu = cpu_seconds(replica.pid) - start_cpu
        primary_cpu = cpu_seconds(primary.pid) - primary_cpu
        connected = log_time(log_of(), needle, seen)
        with closing(replica.client(wait_timeout=30)) as client:
            loaded = loads_revision(client, last_oid, last_tid)
    except BaseException:
        replica.close()     # it must not replicate during what follows
        raise
    replica.stop()
    return dict(seconds=done - connected, startup=connected - launched,
                verified=loaded, replica_cpu=replica_cpu,
                primary_cpu=primary_cpu,
                file_bytes=os.path.getsize(replica.fs_path)), connected, done


def replica_catchup(pair, run, directory, keep):
    """A replica of `pair` catches up, timed from its log line saying it
    connected."""
    replica = run.new_replica(pair, directory)
    result = timed_catchup(
        run, run.primary(pair.primary), replica, replica.log,
        'connected (zrs' if isinstance(replica, ZrsdNode) else ': Connected',
        run.meta)[0]
    if keep:
        run.kept[pair.key] = replica
    else:
        remove_data_files(directory)
    return result


def make_prefix(source, target, transactions):
    """`target` (and its .index): the first `transactions` transactions of
    the FileStorage `source`; returns its length."""
    length = 4
    with open(source, 'rb') as f:
        for _ in range(transactions):
            header = os.pread(f.fileno(), TRANS_HDR_LEN, length)
            length += struct.unpack('>Q', header[8:16])[0] + 8
    shutil.copyfile(source, target)
    os.truncate(target, length)
    ZODB.FileStorage.FileStorage(target).close()
    return length


def blob_files(blob_dir):
    """(count, bytes) of the committed blob files under `blob_dir`."""
    sizes = [os.path.getsize(os.path.join(directory, name))
             for directory, _, files in os.walk(blob_dir)
             for name in files if name.endswith('.blob')]
    return len(sizes), sum(sizes)


def seed_catchup(kind, run, directory, keep):
    """A zrsd replica copies its primary's file: `kind` 'new' (empty),
    'half' (holding the first half) or 'blobs' (empty, the blob workload),
    timed from the primary's log line for the copy's connection; `mb` is
    what it fetched."""
    blobs = kind == 'blobs'
    path, meta = run.blob_workload() if blobs else (run.workload_path,
                                                    run.meta)
    primary = run.primary(ZRSD_BLOBS if blobs else 'zrsd')
    replica = run.own(ZrsdNode(
        directory, 'replica', upstream=primary.repl_port, blobs=blobs,
        copy_file='on' if kind == 'half' else 'new', zrs_lines=SEED_LINES,
        log_format=PRECISE_LOG_FORMAT))
    have = 0
    if kind == 'half':
        have = make_prefix(path, replica.fs_path, meta['transactions'] // 2)
    result, connected, done = timed_catchup(
        run, primary, replica, primary.log, PRIMARY_CONNECTED, meta)
    text = replica.log()
    copied = COPY_DONE in text
    result.update(mb=(meta['file_bytes'] - have + meta.get('blob_bytes', 0))
                  / MB, prefix_bytes=have, copied=copied,
                  transactions=meta['transactions'] - (
                      meta['transactions'] // 2 if have else 0))
    if copied:
        times = [log_time(text, needle) for needle in (
            COPY_STARTED, COPY_DONE, OPENED)] + [done]
        result['split'] = dict(zip(SPLIT, [times[0] - connected] + [
            b - a for a, b in zip(times, times[1:])]))
    if blobs:
        result['blob_files'] = blob_files(replica.blob_dir)
        copied = copied and result['blob_files'] == (
            meta['blobs'], meta['blob_bytes'])
    result['verified'] = result['verified'] and copied and \
        result['file_bytes'] == meta['file_bytes']
    remove_data_files(directory)
    return result


def copy_catchup(run, directory, keep):
    """ZODB's copyTransactionsFrom into a new FileStorage, in this
    process."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, 'copy.fs')
    source = ZODB.FileStorage.FileStorage(run.workload_path, read_only=True)
    target = ZODB.FileStorage.FileStorage(path, create=True)
    try:
        cpu, started = time.process_time(), time.monotonic()
        target.copyTransactionsFrom(source)
        done, cpu = time.monotonic(), time.process_time() - cpu
        verified = target.lastTransaction() == run.last_tid
    finally:
        target.close()
        source.close()
    result = dict(seconds=done - started, verified=verified, replica_cpu=cpu,
                  file_bytes=os.path.getsize(path))
    remove_data_files(directory)
    return result


def bare_stream_catchup(run, directory, keep):
    """The zc.zrs primary's whole stream to a bare consumer here."""
    primary = run.primary('zczrs')
    primary_cpu = cpu_seconds(primary.pid)
    cpu, started = time.process_time(), time.monotonic()
    with connect(primary.repl_port, z64, run.catchup_timeout) as sock:
        stream = StreamReader(sock)
        for tid, _ in stream.commits():
            if tid == run.last_tid:
                return dict(seconds=time.monotonic() - started,
                            verified=True, transactions=stream.transactions,
                            frames=stream.frames, stream_bytes=stream.bytes,
                            replica_cpu=time.process_time() - cpu,
                            primary_cpu=cpu_seconds(primary.pid) - primary_cpu)
    raise RuntimeError('the primary closed the stream after %d transactions'
                       % stream.transactions)


# `measure(run, directory, keep)`: keep the replica (of the last round).
Measurement = collections.namedtuple('Measurement', 'key label measure')
A, B, C, D, E, F, G, H = MEASUREMENTS = tuple(
    Measurement(label[1], label, measure) for label, measure in (
        ('(a) zc.zrs primary -> zrsd replica',
         functools.partial(replica_catchup, ZCZRS_TO_ZRSD)),
        ('(b) zrsd primary -> zrsd replica',
         functools.partial(replica_catchup, ZRSD_TO_ZRSD)),
        ('(c) zc.zrs primary -> zc.zrs secondary',
         functools.partial(replica_catchup, ZCZRS_TO_ZCZRS)),
        ('(d) copyTransactionsFrom (fsync)', copy_catchup),
        ('(e) zc.zrs primary -> bare stream', bare_stream_catchup),
        ('(f) zrsd -> empty replica, file copy',
         functools.partial(seed_catchup, 'new')),
        ('(g) zrsd -> half replica, file copy',
         functools.partial(seed_catchup, 'half')),
        ('(h) zrsd -> empty replica, copy, blobs',
         functools.partial(seed_catchup, 'blobs'))))
# The rate ratios reported, x/y = rate(x) / rate(y) per round, a rate being
# the MB a row fetches (`mb`) over its seconds.
RATIOS = ((A, E), (B, C), (A, C), (B, E), (B, D), (F, C), (G, C), (H, C))
# The targets catchup_X_over_Y on the ratio X/Y, catchup_X_mb_s on the
# MB/s of the rows that copy the file: (ratio or row, label).
RATIO_TARGETS = (('a/e', 'catch-up rate zc.zrs->zrsd / bare zc.zrs stream'),
                 ('b/c', 'catch-up rate zrsd->zrsd / zc.zrs->zc.zrs'),
                 ('f/c', 'copy rate, empty replica / zc.zrs->zc.zrs'),
                 ('g/c', 'copy rate, half replica / zc.zrs->zc.zrs'))
SEEDS = ((F, 'copy into an empty replica, MB/s'),
         (G, 'copy onto a half replica, MB/s'),
         (H, 'copy with blobs, MB/s (file+blobs)'))


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
        split = [run['split'] for run in timed if 'split' in run]
        if split:
            row['split'] = summaries(split, SPLIT)
    ratios = s['catchup_ratios'] = {
        '%s/%s' % (x.key, y.key): summary([
            (a['mb'] / a['seconds']) / (b['mb'] / b['seconds'])
            for a, b in zip(catchup[x.key], catchup[y.key])
            if a.get('seconds') and b.get('seconds')])
        for x, y in RATIOS if x.key in catchup and y.key in catchup}
    for ratio, label in RATIO_TARGETS:
        targets.add_stat('catchup_%s_over_%s' % tuple(ratio.split('/')),
                         label, ratios.get(ratio), 'min')
    for m, label in SEEDS:
        targets.add_stat('catchup_%s_mb_s' % m.key, label,
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
    for m, _ in SEEDS:
        row = s['catchup'].get(m.key) or {}
        split = row.get('split')
        if split:
            p('   %-42s %6.1f MB: handshake %s, copy %s (%.0f MB/s), open '
              '%s, serve %s' % (
                  m.label, row['mb'], median(split['handshake']),
                  median(split['copy']),
                  row['mb'] / split['copy']['median']
                  if split['copy'] and split['copy']['median'] else 0,
                  median(split['open']), median(split['serve'])))
