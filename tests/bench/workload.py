"""The benchmark's workload: a FileStorage written directly (not through
ZEO), deterministic for a preset and a seed, cached under var/bench/.

README.md, "The workload", describes its shape.
"""
import importlib
import json
import os
import pickle
import random
import struct
import time

import ZODB.FileStorage
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, z64

from harness.process import ROOT

from .measure import BENCH_DIR, MB, log

WORKLOAD_FORMAT = 1          # bump when the generator changes
POOL_SIZE = 8 << 20          # random bytes that record payloads are cut from

PRESETS = {
    'small': dict(transactions=2000, big_transactions=1, lag_seconds=3.0,
                  read_seconds=2.0),
    'default': dict(transactions=20000, big_transactions=4,
                    lag_seconds=10.0, read_seconds=5.0),
}


def record_meta():
    """The class pickle of a PersistentMapping record (ZODB's first part)."""
    return pickle.dumps((PersistentMapping, None), 3)


def record_size(rng):
    """100 B - 20 KB, skewed small: median ~200 B, mean ~1.5 KB."""
    return int(100 * 200 ** (rng.random() ** 3))


def tid_at(seconds):
    """The tid of a commit at `seconds` since the epoch (UTC)."""
    return TimeStamp(*time.gmtime(seconds)[:5] + (seconds % 60,)).raw()


def generate_workload(path, transactions, big_transactions, seed):
    """Write the workload FileStorage at `path` (and its .index).

    Deterministic for (transactions, big_transactions, seed): tids start at
    2024-01-01 00:00 UTC, 1-50 ms apart.  Transaction 0 stores the root
    (oid 0).  Each other transaction touches 1-20 distinct objects (a new
    object with probability 0.3, else an existing one at random), records
    of `record_size()`; every transaction with probability 0.2 has a user,
    a description and extension data; `big_transactions` evenly spaced
    transactions hold 5 MB (one 5 MB record, or five of 1 MB, alternately).
    Records are PersistentMapping pickles of a payload cut from a random
    pool (prefixed with a counter, so no two are alike).

    FileStorage fsyncs each transaction; not needed here (the file is
    fsynced once at the end), so the module's `fsync` is switched off while
    writing.  Returns the metadata dict.
    """
    rng = random.Random(seed)
    pool = rng.randbytes(POOL_SIZE)
    meta_pickle = record_meta()
    counter = [0]

    def record(size):
        counter[0] += 1
        payload_size = max(size - len(meta_pickle) - 40, 8)
        offset = rng.randrange(POOL_SIZE - payload_size + 8)
        payload = struct.pack('>Q', counter[0]) + \
            pool[offset:offset + payload_size - 8]
        return meta_pickle + pickle.dumps({'data': {'payload': payload}}, 3)

    big_at = {int((k + 1) * transactions / (big_transactions + 1)): k
              for k in range(big_transactions)}
    fsmodule = importlib.import_module('ZODB.FileStorage.FileStorage')
    saved_fsync = fsmodule.fsync
    fsmodule.fsync = None
    for suffix in ('', '.index', '.lock', '.tmp'):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    fs = ZODB.FileStorage.FileStorage(path, create=True)
    stats = dict(records=0, data_bytes=0, extension_transactions=0,
                 big_transactions=0)
    try:
        now = 1704067200.0          # 2024-01-01 00:00:00 UTC
        last_tid = z64
        oids = []
        last_oid = None
        for i in range(transactions):
            now += rng.uniform(0.001, 0.05)
            tid = tid_at(now)
            if tid <= last_tid:
                tid = TimeStamp(last_tid).laterThan(TimeStamp(last_tid)).raw()
            records = []
            if i == 0:
                records.append((z64, meta_pickle + pickle.dumps(
                    {'data': {}}, 3)))
                oids.append(0)
                user, description, extension = (
                    'bench', 'create the root', {'origin': 'zrsd-bench'})
            else:
                if i in big_at:
                    k = big_at[i]
                    sizes = [5 << 20] if k % 2 == 0 else [1 << 20] * 5
                    stats['big_transactions'] += 1
                else:
                    sizes = [record_size(rng)
                             for _ in range(rng.randint(1, 20))]
                touched = set()
                for size in sizes:
                    if len(oids) < 20 or rng.random() < 0.3 or i in big_at:
                        oid = len(oids)
                        oids.append(oid)
                    else:
                        oid = oids[rng.randrange(len(oids))]
                        if oid in touched:
                            continue
                    touched.add(oid)
                    records.append((p64(oid), record(size)))
                if rng.random() < 0.2:
                    stats['extension_transactions'] += 1
                    user = 'bench-user-%d' % rng.randrange(5)
                    description = rng.choice([
                        'edit', 'bulk import', 'nightly job',
                        'café ✓ résumé'])
                    extension = {'batch': i // 100, 'origin': 'zrsd-bench',
                                 'seq': i, 'tags': ['x', 'y'][:i % 3],
                                 'load': round(rng.random(), 3)}
                else:
                    user, description, extension = '', '', {}
            t = TransactionMetaData(user, description, extension)
            fs.tpc_begin(t, tid)
            for oid, data in records:
                fs.restore(oid, tid, data, '', None, t)
                stats['records'] += 1
                stats['data_bytes'] += len(data)
            fs.tpc_vote(t)
            fs.tpc_finish(t)
            last_tid = tid
            last_oid = records[-1][0]
    finally:
        fs.close()
        fsmodule.fsync = saved_fsync
    with open(path, 'rb+') as f:
        os.fsync(f.fileno())
    for suffix in ('.lock', '.tmp'):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    stats.update(transactions=transactions, last_tid=last_tid.hex(),
                 last_oid=last_oid.hex(), max_oid=len(oids) - 1,
                 objects=len(oids), file_bytes=os.path.getsize(path),
                 seed=seed)
    return stats


def workload(preset, seed):
    """(path, metadata) of the cached workload file, generated if missing.

    The file and its metadata live in var/bench/, named by preset, seed and
    generator version; the metadata file is written last, so an
    interrupted generation is redone.
    """
    params = PRESETS[preset]
    name = 'workload-%s-seed%d-v%d' % (preset, seed, WORKLOAD_FORMAT)
    path = os.path.join(BENCH_DIR, name + '.fs')
    meta_path = os.path.join(BENCH_DIR, name + '.json')
    os.makedirs(BENCH_DIR, exist_ok=True)
    if os.path.exists(meta_path) and os.path.exists(path) \
            and os.path.exists(path + '.index'):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get('file_bytes') == os.path.getsize(path):
            log('workload: cached %s (%d transactions, %.1f MB)' % (
                os.path.relpath(path, ROOT), meta['transactions'],
                meta['file_bytes'] / MB))
            return path, meta
    log('workload: generating %s (%d transactions, seed %d) ...' % (
        os.path.relpath(path, ROOT), params['transactions'], seed))
    started = time.monotonic()
    tmp = os.path.join(BENCH_DIR, name + '.partial.fs')
    meta = generate_workload(tmp, params['transactions'],
                             params['big_transactions'], seed)
    meta['generation_seconds'] = round(time.monotonic() - started, 2)
    meta['preset'] = preset
    os.replace(tmp + '.index', path + '.index')
    os.replace(tmp, path)
    with open(meta_path + '.partial', 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + '.partial', meta_path)
    log('workload: %d transactions, %d records, %.1f MB in %.1f s' % (
        meta['transactions'], meta['records'], meta['file_bytes'] / MB,
        meta['generation_seconds']))
    return path, meta
