"""The benchmark's workload: a FileStorage written directly (not through
ZEO), deterministic for a preset and a seed, cached under var/bench/;
docs/BENCHMARK.md, "The workload", describes its shape."""
import importlib
import itertools
import json
import math
import os
import pickle
import random
import shutil
import struct
import tempfile
import time

import ZODB.FileStorage
from persistent.mapping import PersistentMapping
from ZODB.blob import Blob
from ZODB.Connection import TransactionMetaData
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import p64, z64

from harness.process import ROOT

from .measure import BENCH_DIR, MB, log

WORKLOAD_FORMAT = 1          # bump when the generator changes
POOL_SIZE = 8 << 20          # random bytes that record payloads are cut from
# A PersistentMapping record starts with its class (ZODB's first pickle).
RECORD_CLASS = pickle.dumps((PersistentMapping, None), 3)
# A blob record: the class, then the state (None); the file holds the data.
BLOB_RECORD = pickle.dumps(Blob, 3) + pickle.dumps(None, 3)
# The blob workload: every BLOB_EVERY-th transaction also stores a new
# blob of BLOB_SIZES bytes (log-uniform), from its own random generator.
BLOB_EVERY = 10
BLOB_SIZES = (4 << 10, 512 << 10)

PRESETS = {
    'small': dict(transactions=2000, big_transactions=1, lag_seconds=3.0,
                  read_seconds=2.0),
    'default': dict(transactions=20000, big_transactions=4,
                    lag_seconds=10.0, read_seconds=5.0),
}


def record(state):
    """The data of a PersistentMapping record holding 'data': `state`."""
    return RECORD_CLASS + pickle.dumps({'data': state}, 3)


def blob_dir_of(path):
    """The blob directory of the blob workload at `path`."""
    return path + '.blobs'


def generate_workload(path, transactions, big_transactions, seed,
                      blobs=False):
    """Write the workload FileStorage at `path` (its .index, with `blobs`
    its blob directory); returns its metadata.  Deterministic for the
    arguments (docs/BENCHMARK.md, "The workload"); FileStorage's fsync per
    transaction is off, the file is fsynced once."""
    rng = random.Random(seed)
    pool = rng.randbytes(POOL_SIZE)
    counter = itertools.count(1)
    objects = 1                 # the oids so far: 0 (the root) .. objects - 1
    big_at = {int((k + 1) * transactions / (big_transactions + 1)): k
              for k in range(big_transactions)}
    stats = dict(records=0, data_bytes=0, extension_transactions=0,
                 big_transactions=0, **(dict(blobs=0, blob_bytes=0)
                                        if blobs else {}))
    blob_rng = random.Random(seed + 1)

    def payload(size):
        size = max(size - len(RECORD_CLASS) - 40, 8)
        offset = rng.randrange(POOL_SIZE - size + 8)
        return struct.pack('>Q', next(counter)) + pool[
            offset:offset + size - 8]

    def changes(i):
        """The records ({oid: data}) and the metadata of transaction i > 0."""
        nonlocal objects
        if i in big_at:
            sizes = [5 << 20] if big_at[i] % 2 == 0 else [1 << 20] * 5
            stats['big_transactions'] += 1
        else:
            # 100 B - 20 KB, skewed small: median ~200 B, mean ~1.5 KB.
            sizes = [int(100 * 200 ** (rng.random() ** 3))
                     for _ in range(rng.randint(1, 20))]
        records = {}
        for size in sizes:
            if objects < 20 or rng.random() < 0.3 or i in big_at:
                oid, objects = objects, objects + 1
            else:
                oid = rng.randrange(objects)
                if oid in records:
                    continue
            records[oid] = record({'payload': payload(size)})
        if rng.random() >= 0.2:
            return records, ('', '', {})
        stats['extension_transactions'] += 1
        return records, (
            'bench-user-%d' % rng.randrange(5),
            rng.choice(['edit', 'bulk import', 'nightly job',
                        'café ✓ résumé']),
            {'batch': i // 100, 'origin': 'zrsd-bench', 'seq': i,
             'tags': ['x', 'y'][:i % 3], 'load': round(rng.random(), 3)})

    fsmodule = importlib.import_module('ZODB.FileStorage.FileStorage')
    saved_fsync, fsmodule.fsync = fsmodule.fsync, None
    remove_files(path, ('', '.index', '.lock', '.tmp'))
    blob_dir = blob_dir_of(path) if blobs else None
    if blob_dir:
        shutil.rmtree(blob_dir, ignore_errors=True)
    fs = ZODB.FileStorage.FileStorage(path, create=True, blob_dir=blob_dir)
    try:
        now = 1704067200.0          # 2024-01-01 00:00:00 UTC
        last_tid = z64
        for i in range(transactions):
            now += rng.uniform(0.001, 0.05)
            tid = TimeStamp(*time.gmtime(now)[:5] + (now % 60,)).raw()
            if tid <= last_tid:
                tid = TimeStamp(last_tid).laterThan(TimeStamp(last_tid)).raw()
            records, meta = changes(i) if i else ({0: record({})}, (
                'bench', 'create the root', {'origin': 'zrsd-bench'}))
            t = TransactionMetaData(*meta)
            fs.tpc_begin(t, tid)
            for oid, data in records.items():
                fs.restore(p64(oid), tid, data, '', None, t)
                stats['records'] += 1
                stats['data_bytes'] += len(data)
            last_oid = oid
            if blobs and i % BLOB_EVERY == BLOB_EVERY // 2:
                size = int(BLOB_SIZES[0] * math.exp(blob_rng.random() * (
                    math.log(BLOB_SIZES[1] / BLOB_SIZES[0]))))
                offset = blob_rng.randrange(POOL_SIZE - size)
                fd, blob_path = tempfile.mkstemp(
                    dir=fs.temporaryDirectory())
                with os.fdopen(fd, 'wb') as f:
                    f.write(pool[offset:offset + size])
                fs.restoreBlob(p64(objects), tid, BLOB_RECORD, blob_path,
                               None, t)
                objects += 1
                stats['blobs'] += 1
                stats['blob_bytes'] += size
            fs.tpc_vote(t)
            fs.tpc_finish(t)
            last_tid = tid
    finally:
        fs.close()
        fsmodule.fsync = saved_fsync
    with open(path, 'rb+') as f:
        os.fsync(f.fileno())
    remove_files(path, ('.lock', '.tmp'))
    stats.update(transactions=transactions, last_tid=last_tid.hex(),
                 last_oid=p64(last_oid).hex(), max_oid=objects - 1,
                 objects=objects, file_bytes=os.path.getsize(path), seed=seed)
    return stats


def remove_files(path, suffixes):
    for suffix in suffixes:
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def workload(preset, seed, blobs=False):
    """(path, metadata) of the workload cached in var/bench/ (its metadata
    written last: an interrupted one is redone)."""
    params = PRESETS[preset]
    name = 'workload-%s%s-seed%d-v%d' % (
        preset, '-blobs' if blobs else '', seed, WORKLOAD_FORMAT)
    path, meta_path, tmp = (os.path.join(BENCH_DIR, name + suffix) for
                            suffix in ('.fs', '.json', '.partial.fs'))
    os.makedirs(BENCH_DIR, exist_ok=True)
    if all(map(os.path.exists, (meta_path, path, path + '.index') + (
            (blob_dir_of(path),) if blobs else ()))):
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
    meta = generate_workload(tmp, params['transactions'],
                             params['big_transactions'], seed, blobs)
    meta.update(generation_seconds=round(time.monotonic() - started, 2),
                preset=preset)
    if blobs:
        shutil.rmtree(blob_dir_of(path), ignore_errors=True)
        os.replace(blob_dir_of(tmp), blob_dir_of(path))
    os.replace(tmp + '.index', path + '.index')
    os.replace(tmp, path)
    with open(meta_path + '.partial', 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + '.partial', meta_path)
    log('workload: %d transactions, %d records, %.1f MB%s in %.1f s' % (
        meta['transactions'], meta['records'], meta['file_bytes'] / MB,
        ', %d blobs of %.1f MB' % (meta['blobs'], meta['blob_bytes'] / MB)
        if blobs else '', meta['generation_seconds']))
    return path, meta
