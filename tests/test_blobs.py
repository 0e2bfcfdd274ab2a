"""Blob replication (zrs2.1) from a zrsd primary to a zrsd replica; figures
are printed for `pytest -s`, never asserted."""
import hashlib
import os
import random
import shutil
import time
from contextlib import closing

from ZODB.blob import Blob

from harness.history import assert_same_history
from harness.process import stop_all
from harness.zrsd_nodes import (MB, MemorySampler, blob_db, blob_files,
                                commit_blobs, current_blobs, opened,
                                process_memory, sha256_file, undo_last)

SIZES = [0, 1, 65535, 65536, 65537, 3 * 1024 * 1024 + 17]
BIG_BLOB_SIZE = 200 * 1024 * 1024 + 12345   # not a multiple of a block
CHUNK = 1 << 20     # written a MiB at a time


def content(size, seed):
    return random.Random(seed).randbytes(size)


def blob_nodes(node):
    """A started primary with a root object and its replica, with blobs."""
    primary = node('primary', blobs=True).start()
    primary.commit('created', True)
    return primary, node('replica', blobs=True,
                         upstream=primary.repl_port).start()


def blob_revisions(db, names):
    """{name: [(tid, content), ...]} of every revision of each blob."""
    with opened(db) as (tm, root):
        revisions = {}
        for name in names:
            oid = root[name]._p_oid
            revisions[name] = []
            for entry in db.storage.history(oid, size=100):
                with open(db.storage.loadBlob(oid, entry['tid']), 'rb') as f:
                    revisions[name].append((entry['tid'], f.read()))
        return revisions


def stop_and_compare(primary, replica):
    """Stop both, compare blob files and history; the primary's files."""
    stop_all(replica, primary)
    files = blob_files(primary.blob_dir)
    assert blob_files(replica.blob_dir) == files
    assert_same_history(primary.fs_path, replica.fs_path)
    return files


def test_blob_replication(tmp_path, node):
    """Blobs around the 64 KiB blocks, changed and undone: every revision
    reads the same from the replica (private cache and shared dir)."""
    primary, replica = blob_nodes(node)
    names = ['b%d' % size for size in SIZES]
    expected = {'b%d' % size: content(size, size) for size in SIZES}
    with closing(blob_db(primary, tmp_path / 'cache-p')) as db:
        commit_blobs(db, {n: expected[n] for n in names[:4]}, 'four small')
        commit_blobs(db, {n: expected[n] for n in names[4:]}, 'two larger')
        commit_blobs(db, {'b65536': content(70000, 'changed')}, 'undone')
        undo_last(db)
        expected['b1'] = content(2 * 65536, 'changed for good')
        last = commit_blobs(db, {'b1': expected['b1']}, 'a blob changed')
        assert current_blobs(db, names) == expected
        revisions = blob_revisions(db, names)
    assert [len(r) for r in revisions.values()] == [1, 2, 1, 3, 1, 1]
    replica.wait_for_tid(last)
    assert 'connected (zrs2.1)' in replica.log()
    for shared, blob_dir in ((False, str(tmp_path / 'cache-r')),
                             (True, replica.blob_dir)):
        with closing(replica.db(read_only=True, blob_dir=blob_dir,
                                shared_blob_dir=shared)) as db:
            assert current_blobs(db, names) == expected, shared
            assert blob_revisions(db, names) == revisions, shared
    files = stop_and_compare(primary, replica)
    assert len([p for p in files if p.endswith('.blob')]) == sum(
        len(r) for r in revisions.values())


def test_big_blob(tmp_path, node):
    """A 200 MB blob replicates intact (sha256); RSS printed."""
    try:
        primary, replica = blob_nodes(node)
        replica.wait_for_tid(primary.last_tid())
        rss_before = process_memory(replica.pid)[0]
        rng = random.Random(200)
        digest = hashlib.sha256()
        with closing(blob_db(primary, tmp_path / 'cache')) as db:
            with opened(db) as (tm, root):
                blob = root['big'] = Blob()
                with blob.open('w') as f:
                    for at in range(0, BIG_BLOB_SIZE, CHUNK):
                        chunk = rng.randbytes(min(CHUNK, BIG_BLOB_SIZE - at))
                        digest.update(chunk)
                        f.write(chunk)
                with MemorySampler(replica.pid) as replica_memory, \
                        MemorySampler(primary.pid) as primary_memory:
                    tm.commit()
                    committed = time.monotonic()
                    tid = db.lastTransaction()
                    replica.wait_for_tid(tid, timeout=300)
                    replicated = time.monotonic()
        with closing(replica.db(read_only=True, blob_dir=replica.blob_dir,
                                shared_blob_dir=True)) as db:
            replica_blob = db.storage.loadBlob(blob._p_oid, tid)
            assert os.path.getsize(replica_blob) == BIG_BLOB_SIZE
            assert sha256_file(replica_blob) == digest.hexdigest()
        stop_and_compare(primary, replica)
        print('\nbig blob: %.1f MB on the replica %.2f s after the commit;'
              ' replica RSS %.1f MB before, peak %.1f MB; primary peak %.1f'
              ' MB' % (BIG_BLOB_SIZE / MB, replicated - committed,
                       rss_before / MB, replica_memory.peak_rss / MB,
                       primary_memory.peak_rss / MB))
    finally:    # the big files, not the logs
        for path in tmp_path.glob('*/*'):
            if path.suffix != '.log':
                (shutil.rmtree if path.is_dir() else os.remove)(path)
