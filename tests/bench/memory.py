"""5. Memory: the peak RSS of a zrsd replica (with a blob-dir) of a zrsd
primary (with a blob-dir) while it replicates a 100 MB transaction, then a
big blob.  Runs once, not per round, after the other phases."""
import contextlib
import os
import random
import shutil
import struct
import time

import ZEO
from ZODB.blob import Blob
from ZODB.Connection import TransactionMetaData
from ZODB.utils import z64

from harness.zrsd_nodes import MemorySampler, ZrsdNode, opened, \
    process_memory

from .measure import MB, attempt, served_tid, wait_served
from .stream import connect
from .workload import POOL_SIZE, record

NAME = 'memory'
TITLE = ('5. Memory: zrsd replica peak RSS (zrsd primary -> zrsd replica, '
         'both with blob-dir)')
BIG_TXN_RECORDS = 10         # the memory test's 100 MB transaction:
BIG_TXN_RECORD_MB = 10       # 10 records of 10 MB
BLOB_MB = 1024               # ... and its 1 GB blob
BLOB_MIN_FREE = 4 << 30      # free disk needed for the blob test


def memory_mb(node, which=0):
    """VmRSS (`which` 0) or VmHWM (1) of `node`'s process in MB, or 0."""
    return (process_memory(node.pid) or (0, 0))[which] / MB


def replicated(replica, commit, timeout):
    """`commit()` -> (tid, when it began), until `replica` serves the tid;
    its peak RSS meanwhile: VmHWM if it could be reset, else sampled."""
    try:    # VmHWM reset to VmRSS, if the kernel does
        with open('/proc/%d/clear_refs' % replica.pid, 'w') as f:
            f.write('5')
        values = process_memory(replica.pid)
        hwm_reset = bool(values) and values[1] <= values[0] * 1.1 + (1 << 20)
    except OSError:
        hwm_reset = False
    with MemorySampler(replica.pid) as sampler:
        tid, started = commit()
        committed = time.monotonic()
        done = wait_served(replica, tid, timeout)
    peak = sampler.peak_rss / MB
    return dict(peak_rss_mb=max(memory_mb(replica, 1), peak) if hwm_reset
                else peak, sampled_peak_rss_mb=peak, hwm_reset=hwm_reset,
                commit_seconds=committed - started,
                replicated_seconds=done - committed)


def idle_secondaries(primary, count=20):
    """The primary's RSS before and after (once it stops growing: each
    streamer fills its link and pauses) `count` secondaries connected and
    never read."""
    before = memory_mb(primary)
    with contextlib.ExitStack() as links:
        for _ in range(count):
            links.enter_context(connect(primary.repl_port, z64, protocol=(
                b'zrs2.1' if primary.blob_dir else b'zrs2.0')))
        samples = [memory_mb(primary)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
                len(samples) < 5 or samples[-1] - samples[-5] > 0.5):
            time.sleep(0.5)
            samples.append(memory_mb(primary))
    return dict(count=count, before_mb=before, after_mb=samples[-1],
                per_secondary_mb=(samples[-1] - before) / count,
                history_mb=os.path.getsize(primary.fs_path) / MB)


def big_transaction(storage, replica):
    """Commit 10 records of 10 MB with the storage API."""
    chunk = random.Random(100).randbytes(BIG_TXN_RECORD_MB << 20)

    def commit():
        t = TransactionMetaData('bench', '100 MB transaction')
        storage.tpc_begin(t)
        for k in range(BIG_TXN_RECORDS):
            storage.store(storage.new_oid(), z64, record(
                {'payload': struct.pack('>Q', k) + chunk}), '', t)
        started = time.monotonic()
        storage.tpc_vote(t)
        return storage.tpc_finish(t), started
    return dict(mb=BIG_TXN_RECORDS * BIG_TXN_RECORD_MB,
                **replicated(replica, commit, 300))


def big_blob(db, replica, blob_mb):
    """Write a `blob_mb` blob in 1 MB chunks into the primary's (shared)
    blob directory and commit it."""
    pool = random.Random(1024).randbytes(POOL_SIZE)

    def commit():
        tm.get().note('a %d MB blob' % blob_mb)
        tm.commit()
        return db.lastTransaction(), written
    with opened(db) as (tm, root):
        blob = root['big'] = Blob()
        started = time.monotonic()
        with blob.open('w') as f:
            for k in range(blob_mb):
                offset = (k * 7919 * 4096) % (POOL_SIZE - (1 << 20))
                f.write(struct.pack('>Q', k))
                f.write(pool[offset:offset + (1 << 20) - 8])
        written = time.monotonic()
        return dict(mb=blob_mb, write_seconds=written - started,
                    **replicated(replica, commit, 600))


def memory(run):
    """Both parts, with a fresh primary and replica."""
    directory = run.path('memory')
    primary = run.own(ZrsdNode(os.path.join(directory, 'primary'),
                               'primary', blobs=True)).start()
    db = ZEO.DB(primary.zeo_address, blob_dir=primary.blob_dir,
                shared_blob_dir=True)
    results = {}
    try:
        replica = run.own(ZrsdNode(
            os.path.join(directory, 'replica'), 'replica',
            upstream=primary.repl_port, blobs=True)).start()
        wait_served(replica, served_tid(primary.zeo_port), 60)
        results['baseline_rss_mb'] = memory_mb(replica)
        results['txn'] = big_transaction(db.storage, replica)
        free = shutil.disk_usage(directory).free
        results['blob'] = big_blob(db, replica, run.args.blob_mb) \
            if free >= BLOB_MIN_FREE else dict(
                skipped='only %.1f GB free on %s (need %.0f GB)' % (
                    free / MB / 1024, directory, BLOB_MIN_FREE >> 30))
        results['primary_peak_rss_mb'] = memory_mb(primary, 1)
        replica.stop()
    finally:
        db.close()
        primary.stop()
    try:
        # A fresh primary process, secondaries stopped at the start of
        # its history (the 10 MB records and the blob).
        primary.start()
        results['idle_secondaries'] = idle_secondaries(primary)
    finally:
        primary.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return results


def run_phase(run):
    """Last: the other phases' servers and files are removed first."""
    run.close()
    return attempt('memory', memory, run)


def summarise(memory, s, targets, meta):
    """The memory targets (the results are the figures)."""
    for part, what in (('txn', 'transaction'), ('blob', 'blob')):
        result = memory.get(part, {})
        if 'peak_rss_mb' in result:
            targets.add('memory_mb', 'replica peak RSS, %d MB %s' % (
                result['mb'], what), result['peak_rss_mb'])


def report(s, memory, p):
    """The memory lines (passed to `p`)."""
    if 'error' in memory:
        return p('   FAILED: %s' % memory['error'])
    txn, blob = memory['txn'], memory['blob']
    idle = memory['idle_secondaries']
    p('   baseline RSS %.1f MB' % memory['baseline_rss_mb'])
    p('   %d MB transaction: peak %.1f MB (replicated in %.2f s after the '
      'commit)' % (txn['mb'], txn['peak_rss_mb'], txn['replicated_seconds']))
    p('   blob: SKIPPED: %s' % blob['skipped'] if 'skipped' in blob else
      '   %d MB blob: peak %.1f MB (written in %.1f s, replicated in %.2f s '
      'after the commit)' % (blob['mb'], blob['peak_rss_mb'],
                             blob['write_seconds'],
                             blob['replicated_seconds']))
    p('   (primary peak RSS %.1f MB)' % memory['primary_peak_rss_mb'])
    p('   primary, %d secondaries that stop reading at the start of its '
      '%.0f MB history: +%.1f MB each (RSS %.0f -> %.0f MB)' % (
          idle['count'], idle['history_mb'], idle['per_secondary_mb'],
          idle['before_mb'], idle['after_mb']))
