"""4. Memory: the peak RSS of a zrsd replica (with a blob-dir) of a zrsd
primary (with a blob-dir) while it replicates a 100 MB transaction, then a
big blob.  Runs once, not per round, after the other phases."""
import os
import pickle
import random
import shutil
import struct
import time

import transaction
import ZEO
from ZODB.blob import Blob
from ZODB.Connection import TransactionMetaData
from ZODB.utils import z64

from harness.zrsd_nodes import MemorySampler, ZrsdNode

from .measure import (
    MB, check_alive, failed, reset_peak_rss, served_tid, vm_status,
    wait_served)
from .workload import POOL_SIZE, record_meta

BIG_TXN_RECORDS = 10         # the memory test's 100 MB transaction:
BIG_TXN_RECORD_MB = 10       # 10 records of 10 MB
BLOB_MB = 1024               # ... and its 1 GB blob
BLOB_MIN_FREE = 4 << 30      # free disk needed for the blob test


def peak(pid, hwm_reset, sampler):
    """Peak RSS over the measurement: VmHWM if it could be reset before,
    else the sampled peak (10 ms samples)."""
    if hwm_reset:
        return max(vm_status(pid).get('VmHWM', 0), sampler.peak_rss)
    return sampler.peak_rss


def big_transaction(storage, replica):
    """Commit 10 records of 10 MB with the storage API; the replica's peak
    RSS until it serves the commit."""
    pid = replica.process.pid
    chunk = random.Random(100).randbytes(BIG_TXN_RECORD_MB << 20)
    meta_pickle = record_meta()
    hwm_reset = reset_peak_rss(pid)
    with MemorySampler(pid) as sampler:
        t = TransactionMetaData('bench', '100 MB transaction')
        storage.tpc_begin(t)
        for k in range(BIG_TXN_RECORDS):
            storage.store(
                storage.new_oid(), z64, meta_pickle + pickle.dumps(
                    {'data': {'payload': struct.pack('>Q', k) + chunk}}, 3),
                '', t)
        started = time.monotonic()
        storage.tpc_vote(t)
        tid = storage.tpc_finish(t)
        committed = time.monotonic()
        done = wait_served(replica.zeo_port, tid,
                           check_alive(replica.process), 300)
    return dict(
        mb=BIG_TXN_RECORDS * BIG_TXN_RECORD_MB,
        peak_rss_mb=peak(pid, hwm_reset, sampler) / MB,
        sampled_peak_rss_mb=sampler.peak_rss / MB,
        hwm_reset=hwm_reset, commit_seconds=committed - started,
        replicated_seconds=done - committed)


def big_blob(db, replica, blob_mb):
    """Write a `blob_mb` blob in 1 MB chunks into the primary's blob
    directory (a shared blob dir: no upload over ZEO) and commit it; the
    replica's peak RSS until it serves the commit."""
    pid = replica.process.pid
    pool = random.Random(1024).randbytes(POOL_SIZE)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        blob = conn.root()['big'] = Blob()
        started = time.monotonic()
        with blob.open('w') as f:
            for k in range(blob_mb):
                offset = (k * 7919 * 4096) % (POOL_SIZE - (1 << 20))
                f.write(struct.pack('>Q', k))
                f.write(pool[offset:offset + (1 << 20) - 8])
        written = time.monotonic()
        hwm_reset = reset_peak_rss(pid)
        with MemorySampler(pid) as sampler:
            tm.get().note('a %d MB blob' % blob_mb)
            tm.commit()
            committed = time.monotonic()
            tid = conn.root()._p_jar.db().lastTransaction()
            done = wait_served(replica.zeo_port, tid,
                               check_alive(replica.process), 600)
    finally:
        tm.abort()
        conn.close()
    return dict(
        mb=blob_mb, peak_rss_mb=peak(pid, hwm_reset, sampler) / MB,
        sampled_peak_rss_mb=sampler.peak_rss / MB,
        hwm_reset=hwm_reset, write_seconds=written - started,
        commit_seconds=committed - written,
        replicated_seconds=done - committed)


def memory(run, blob_mb):
    """Both parts with a fresh primary and replica; returns the results
    (the blob part is skipped, with a note, without BLOB_MIN_FREE)."""
    directory = run.path('memory')
    primary = run.own(ZrsdNode(os.path.join(directory, 'primary'),
                               'primary', blobs=True))
    primary.start()
    db = ZEO.DB(primary.zeo_address, blob_dir=primary.blob_dir,
                shared_blob_dir=True)
    results = {}
    try:
        replica = run.own(ZrsdNode(
            os.path.join(directory, 'replica'), 'replica',
            upstream=primary.repl_port, blobs=True))
        replica.start()
        wait_served(replica.zeo_port, served_tid(primary.zeo_port),
                    check_alive(replica.process), timeout=60)
        results['baseline_rss_mb'] = \
            vm_status(replica.process.pid)['VmRSS'] / MB
        results['txn'] = big_transaction(db.storage, replica)
        free = shutil.disk_usage(directory).free
        if free < BLOB_MIN_FREE:
            results['blob'] = dict(
                skipped='only %.1f GB free on %s (need %.0f GB)' % (
                    free / MB / 1024, directory, BLOB_MIN_FREE >> 30))
            return results
        results['blob'] = big_blob(db, replica, blob_mb)
        results['primary_peak_rss_mb'] = vm_status(
            primary.process.pid).get('VmHWM', 0) / MB
        replica.stop()
    finally:
        db.close()
        primary.stop()
        shutil.rmtree(directory, ignore_errors=True)
    return results


def run_memory(run, blob_mb, results):
    """results['memory']: the measurement, or its error."""
    try:
        results['memory'] = memory(run, blob_mb)
    except Exception as exc:
        results['memory'] = failed('memory', exc)


def summarise(memory, s, targets):
    """The memory targets (the figures are the results themselves)."""
    if 'error' in memory:
        return
    for key, label in (('txn', '100 MB transaction'),
                       ('blob', '%d MB blob' % memory.get(
                           'blob', {}).get('mb', BLOB_MB))):
        part = memory.get(key, {})
        if 'peak_rss_mb' in part:
            targets.add('memory_mb', 'replica peak RSS, %s' % label,
                        part['peak_rss_mb'])


def report(memory, p):
    """The memory lines (passed to `p`)."""
    p('')
    p('4. Memory: zrsd replica peak RSS (zrsd primary -> zrsd replica, '
      'both with blob-dir)')
    if 'error' in memory:
        p('   FAILED: %s' % memory['error'])
        return
    p('   baseline RSS %.1f MB' % memory['baseline_rss_mb'])
    txn = memory.get('txn', {})
    if txn:
        p('   %d MB transaction: peak %.1f MB (replicated in %.2f s '
          'after the commit)' % (txn['mb'], txn['peak_rss_mb'],
                                 txn['replicated_seconds']))
    blob = memory.get('blob', {})
    if 'skipped' in blob:
        p('   blob: SKIPPED: %s' % blob['skipped'])
    elif blob:
        p('   %d MB blob: peak %.1f MB (written in %.1f s, '
          'replicated in %.2f s after the commit)' % (
              blob['mb'], blob['peak_rss_mb'], blob['write_seconds'],
              blob['replicated_seconds']))
    if 'primary_peak_rss_mb' in memory:
        p('   (primary peak RSS %.1f MB)' % memory['primary_peak_rss_mb'])
