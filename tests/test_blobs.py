"""Blob replication (zrs2.1) from a zrsd primary to a zrsd replica.

Both storages have a blob-dir.  Blobs are committed through a ZEO client of
the primary with a private (non-shared) blob cache, so they travel to the
primary over ZEO and from there to the replica over ZRS.  The replica is
read through ZEO clients in both blob configurations: a private blob cache
(blobs downloaded from the replica server) and a shared blob dir (the
client reads the replica's own blob-dir).  Figures are printed for
`pytest -s`, never asserted.
"""
import hashlib
import os
import random
import shutil
import time

import transaction
import ZEO
from ZODB.blob import Blob

from harness import zczrs
from harness.history import assert_same_history
from harness.zrsd_nodes import MB, MemorySampler, ZrsdNode

SIZES = [0, 1, 65535, 65536, 65537, 3 * 1024 * 1024 + 17]
BIG_BLOB_SIZE = 200 * 1024 * 1024 + 12345   # not a multiple of a block
CHUNK = 1024 * 1024


def content(size, seed):
    return random.Random(seed).randbytes(size)


def blob_nodes(tmp_path, register):
    """A zrsd primary and a zrsd replica of it, both with a blob-dir; the
    primary is started and holds a root object (a fresh replica serves
    ZEO only once it has a transaction), the replica is not started."""
    primary = ZrsdNode(tmp_path / 'primary', 'primary', blobs=True,
                       register=register).start()
    zczrs.commit_change(primary.zeo_address, 'created', True)
    replica = ZrsdNode(tmp_path / 'replica', 'replica',
                       upstream=primary.repl_port, blobs=True,
                       register=register)
    return primary, replica


def commit_blobs(db, blobs, note):
    """Set root[name] = Blob(data) for {name: data}; returns the tid."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        tm.begin()
        root = conn.root()
        for name, data in blobs.items():
            if name in root:
                with root[name].open('w') as f:
                    f.write(data)
            else:
                root[name] = Blob(data)
        tm.get().note(note)
        tm.commit()
        return db.lastTransaction()
    finally:
        tm.abort()
        conn.close()


def undo_last(db):
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        tm.begin()
        db.undo(db.undoLog(0, 1)[0]['id'], tm.get())
        tm.get().note('undo the blob change')
        tm.commit()
    finally:
        tm.abort()
        conn.close()
    return db.lastTransaction()


def blob_revisions(db, names):
    """{name: [(tid, blob content), ...]} for every revision in the
    storage's history of each blob (old ones through loadBlob)."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        root = conn.root()
        revisions = {}
        for name in names:
            oid = root[name]._p_oid
            revisions[name] = []
            for entry in db.storage.history(oid, size=100):
                with open(db.storage.loadBlob(oid, entry['tid']), 'rb') as f:
                    revisions[name].append((entry['tid'], f.read()))
        return revisions
    finally:
        tm.abort()
        conn.close()


def current_blobs(db, names):
    """{name: content} read through ZODB (Blob.open)."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        root = conn.root()
        result = {}
        for name in names:
            with root[name].open('r') as f:
                result[name] = f.read()
        return result
    finally:
        tm.abort()
        conn.close()


def blob_files(blob_dir):
    """{relative path: sha256} of the blob files, without the `tmp` dir
    (uncommitted uploads) and the `.layout` marker."""
    result = {}
    for directory, dirs, files in os.walk(blob_dir):
        if directory == blob_dir and 'tmp' in dirs:
            dirs.remove('tmp')
        for name in files:
            if name == '.layout':
                continue
            path = os.path.join(directory, name)
            result[os.path.relpath(path, blob_dir)] = sha256_file(path)
    return result


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def test_blob_replication(tmp_path, processes):
    """Blobs of 0, 1, 65535, 65536, 65537 bytes and a few MB (block
    boundaries of the zrs2.1 stream), a changed blob and an undone blob
    change replicate over zrs2.1; every revision reads the same from the
    replica with a private blob cache and with the shared blob-dir; after
    stopping, both blob-dirs hold the same files and both FileStorages the
    same history."""
    primary, replica = blob_nodes(tmp_path, processes)
    replica.start()
    names = ['b%d' % size for size in SIZES]
    expected = {'b%d' % size: content(size, size) for size in SIZES}

    db = ZEO.DB(primary.zeo_address, blob_dir=str(tmp_path / 'cache-p'),
                shared_blob_dir=False)
    try:
        commit_blobs(db, {name: expected[name] for name in names[:4]},
                     'four small blobs')
        commit_blobs(db, {name: expected[name] for name in names[4:]},
                     'two larger blobs')
        commit_blobs(db, {'b65536': content(70000, 'changed')},
                     'a blob changed, then undone')
        undo_last(db)
        expected['b1'] = content(2 * 65536, 'changed for good')
        last = commit_blobs(db, {'b1': expected['b1']}, 'a blob changed')
        assert current_blobs(db, names) == expected
        primary_revisions = blob_revisions(db, names)
    finally:
        db.close()
    assert [len(r) for r in primary_revisions.values()] == \
        [1, 2, 1, 3, 1, 1]

    replica.wait_for_tid(last)
    assert 'connected (zrs2.1)' in replica.log()
    for shared, blob_dir in ((False, str(tmp_path / 'cache-r')),
                             (True, replica.blob_dir)):
        db = ZEO.DB(replica.zeo_address, read_only=True, blob_dir=blob_dir,
                    shared_blob_dir=shared)
        try:
            assert current_blobs(db, names) == expected, (
                'shared_blob_dir=%s' % shared)
            assert blob_revisions(db, names) == primary_revisions, (
                'shared_blob_dir=%s' % shared)
        finally:
            db.close()

    replica.stop()
    primary.stop()
    primary_files = blob_files(primary.blob_dir)
    assert len(primary_files) == sum(
        len(r) for r in primary_revisions.values())
    assert blob_files(replica.blob_dir) == primary_files
    assert_same_history(primary.fs_path, replica.fs_path)


def test_big_blob(tmp_path, processes):
    """A 200 MB blob replicates intact (sha256 compared, streaming); prints
    the replica's peak RSS while it replicates and how long it took.

    The blob is written in 1 MB chunks and hashed on the way; nothing here
    holds it in memory.  The big files are removed at the end.
    """
    try:
        primary, replica = blob_nodes(tmp_path, processes)
        replica.start()
        replica.wait_for_tid(primary.last_tid())
        rss_before = replica.rss()[0]

        rng = random.Random(200)
        digest = hashlib.sha256()
        db = ZEO.DB(primary.zeo_address, blob_dir=str(tmp_path / 'cache'),
                    shared_blob_dir=False)
        try:
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            try:
                blob = conn.root()['big'] = Blob()
                with blob.open('w') as f:
                    remaining = BIG_BLOB_SIZE
                    while remaining:
                        chunk = rng.randbytes(min(CHUNK, remaining))
                        digest.update(chunk)
                        f.write(chunk)
                        remaining -= len(chunk)
                tm.get().note('a big blob')
                with MemorySampler(replica.process.pid) as replica_memory:
                    with MemorySampler(primary.process.pid) as \
                            primary_memory:
                        started = time.monotonic()
                        tm.commit()
                        committed = time.monotonic()
                        tid = db.lastTransaction()
                        replica.wait_for_tid(tid, timeout=300)
                        replicated = time.monotonic()
                oid = blob._p_oid
            finally:
                tm.abort()
                conn.close()
        finally:
            db.close()

        db = ZEO.DB(replica.zeo_address, read_only=True,
                    blob_dir=replica.blob_dir, shared_blob_dir=True)
        try:
            replica_blob = db.storage.loadBlob(oid, tid)
            assert os.path.getsize(replica_blob) == BIG_BLOB_SIZE
            assert sha256_file(replica_blob) == digest.hexdigest()
        finally:
            db.close()
        replica.stop()
        primary.stop()
        assert blob_files(replica.blob_dir) == blob_files(primary.blob_dir)
        assert_same_history(primary.fs_path, replica.fs_path)

        print('\nbig blob: %.1f MB committed over ZEO in %.2f s, on the '
              'replica %.2f s after the commit (%.2f s from its start, '
              '%.0f MB/s)' % (
                  BIG_BLOB_SIZE / MB, committed - started,
                  replicated - committed, replicated - started,
                  BIG_BLOB_SIZE / MB / (replicated - started)))
        print('replica RSS: %.1f MB before, peak %.1f MB sampled while '
              'replicating (%d samples), VmHWM %.1f MB; primary peak RSS '
              '%.1f MB, VmHWM %.1f MB' % (
                  rss_before / MB, replica_memory.peak_rss / MB,
                  len(replica_memory.samples), replica_memory.peak_hwm / MB,
                  primary_memory.peak_rss / MB,
                  primary_memory.peak_hwm / MB))
    finally:
        # The logs stay (the `processes` fixture shows them on failure).
        for path in (tmp_path / 'primary', tmp_path / 'replica'):
            for name in os.listdir(path):
                if not name.endswith('.log'):
                    remove(path / name)
        remove(tmp_path / 'cache')


def remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
