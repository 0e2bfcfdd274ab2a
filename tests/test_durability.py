"""The durability rule and fail-stop (zrsd.disk, README "Durability"):
the order of fsyncs with blobs, on a replica and on a primary; a failed
fsync stops the node once and is never retried or believed, live and in a
group; a full disk stops a replica (exit 1, one CRITICAL line) until there
is space.
"""
import errno
import os
import sys
import time
from types import SimpleNamespace

import pytest
import ZODB
import ZODB.FileStorage
from ZODB.utils import p64, u64, z64

from harness.history import assert_same_history, transactions
from harness.process import stop_all, wait_until
from harness.stream import replicate
from harness.zczrs import commit_change
from harness.zrsd_nodes import commit_blobs
from torture.disk_full import QUOTA_SITE
from zrsd import disk
from zrsd.primary.storage import PrimaryStorage
from zrsd.replica.storage import ReplicaStorage

EIO = OSError(errno.EIO, 'Input/output error')


def data_fs(tmp_path, blobs=False):
    """The FileStorage tmp_path/Data.fs (with blobs: in tmp_path/blobs)."""
    return ZODB.FileStorage.FileStorage(
        str(tmp_path / 'Data.fs'),
        blob_dir=str(tmp_path / 'blobs') if blobs else None)


def source(tmp_path, blobs=0, read_blobs=False):
    """The root's transaction, then `blobs` adding a blob each."""
    path, blob_dir = str(tmp_path / 'source.fs'), str(tmp_path / 'blobs.s')
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path, blob_dir=blob_dir))
    for i in range(blobs):
        commit_blobs(db, {'blob%d' % i: b'blob %d ' % i * 1000}, 'blob')
    db.close()
    return transactions(path, blob_dir if read_blobs else None)


@pytest.fixture
def fsyncs(monkeypatch):
    """The paths fsynced, in order; `fail(error)`: the next ones raise."""
    class Paths(list):
        fail = None
    done, failing, real = Paths(), [], os.fsync

    def fsync(fd):
        done.append(os.readlink('/proc/self/fd/%d' % fd))
        if failing:
            raise failing[0]
        return real(fd)
    # FileStorage's own commits call its module's copy of os.fsync.
    for owner, name in ((os, 'fsync'), (os, 'fdatasync'), (sys.modules[
            'ZODB.FileStorage.FileStorage'], 'fsync')):
        monkeypatch.setattr(owner, name, fsync)
    done.fail = failing.append
    return done


@pytest.fixture
def stops(monkeypatch):
    """The failures `disk.stop_process` was called with (it returns)."""
    calls = []
    monkeypatch.setattr(disk, 'stop_process', calls.append)
    return calls


def blob_files(root):
    return sorted(os.path.join(d, name) for d, _, names in os.walk(root)
                  for name in names if name.endswith('.blob'))


def assert_blob_order(synced, tmp_path):
    """Each blob file, then its directories, then Data.fs is synced."""
    data_file, blob_root = str(tmp_path / 'Data.fs'), str(tmp_path / 'blobs')
    data = [i for i, path in enumerate(synced) if path == data_file]
    assert data, synced
    for blob in blob_files(blob_root):
        index = synced.index(blob)
        directories = synced[index + 1:data[0] if data[0] > index
                             else len(synced)]
        parent = os.path.dirname(blob)
        while len(parent) >= len(blob_root):
            assert parent in directories, (parent, synced)
            parent = os.path.dirname(parent)
        assert any(i > index for i in data), synced


def test_replica_syncs_blob_files_and_directories_before_the_commit(
        tmp_path, fsyncs):
    replica = ReplicaStorage(data_fs(tmp_path, blobs=True))
    replicate(replica.writer, source(tmp_path, 2, read_blobs=True))
    replica.close()
    assert_blob_order(fsyncs, tmp_path)
    assert len(blob_files(str(tmp_path / 'blobs'))) == 2


def test_primary_syncs_blob_files_and_directories_before_the_commit(
        tmp_path, fsyncs):
    db = ZODB.DB(PrimaryStorage(data_fs(tmp_path, blobs=True)))
    commit_blobs(db, {'blob': b'x' * 5000}, 'blob')
    db.close()
    assert_blob_order(fsyncs, tmp_path)


def test_failed_fsync_in_live_replication_stops_and_is_never_retried(
        tmp_path, fsyncs, stops):
    txns, replica = source(tmp_path), ReplicaStorage(data_fs(tmp_path))
    invalidated = []
    replica.registerDB(SimpleNamespace(
        invalidate=lambda tid, oids: invalidated.append(tid)))
    fsyncs.fail(EIO)
    with pytest.raises(disk.StorageFailure):
        replicate(replica.writer, txns)
    [failure] = stops
    assert str(failure) == ('%s: [Errno 5] Input/output error while '
                            'committing transactions' % (tmp_path / 'Data.fs'))
    attempts = len(fsyncs)
    # Nothing was shown to ZEO clients, and nothing is retried.
    assert (replica.lastTransaction(), invalidated) == (z64, [])
    with pytest.raises(disk.StorageFailure):
        replica.writer.sync()
    with pytest.raises(disk.StorageFailure):
        replica.writer.begin(b'\x7f' * 8, ' ', b'', b'', {})
    assert len(fsyncs) == attempts and len(stops) == 1


def test_failed_group_fsync_stops_and_publishes_nothing(
        tmp_path, fsyncs, stops):
    txns, replica = source(tmp_path, 2), ReplicaStorage(data_fs(tmp_path))
    fsyncs.clear()
    writer = replica.writer
    writer.defer_sync = True
    replicate(writer, [t._replace(records=[r for r in t.records
                                           if r.blob is None]) for t in txns])
    assert (fsyncs, writer.unsynced) == ([], 3)
    fsyncs.fail(EIO)
    with pytest.raises(disk.StorageFailure, match='committing'):
        writer.sync()
    with pytest.raises(disk.StorageFailure):
        writer.sync()
    assert len(fsyncs) == 1 and len(stops) == 1
    assert replica.lastTransaction() == z64
    assert replica.committed_file()[1] == 4


def test_a_failing_primary_commit_stops_the_process(tmp_path, fsyncs, stops):
    db = ZODB.DB(PrimaryStorage(data_fs(tmp_path)))
    fsyncs.fail(EIO)
    with pytest.raises(disk.StorageFailure):
        with db.transaction() as conn:
            conn.root()['x'] = 1
    [failure] = stops
    assert 'Errno 5' in str(failure) and 'committing' in str(failure)


def test_full_disk_stops_the_replica_until_there_is_space(
        tmp_path, zczrs_primary, node):
    """ENOSPC: exit 1, one CRITICAL line, again on restart; space: catch-up."""
    primary, quota = zczrs_primary, tmp_path / 'quota'
    quota.write_text('%d\n' % (1 << 62))
    replica = node('replica', upstream=primary.repl_port, env={
        'PYTHONPATH': QUOTA_SITE, 'ZRSD_TORTURE_QUOTA_FILE': str(quota)})
    replica.start().wait_for_tid(primary.last_tid())
    quota.write_text('%d\n' % os.path.getsize(replica.fs_path))
    for episode in range(2):
        if episode:
            replica.launch()     # as systemd or zdaemon would
        else:
            commit_change(primary.zeo_address, 'full', b'x' * 100000)
        wait_until(lambda: not replica.running(), 60,
                   message='the replica to stop on the full disk')
        assert replica.process.popen.returncode == 1
        [line] = [line for line in replica.log().splitlines()
                  if ' CRITICAL ' in line]
        assert 'No space left on device' in line, line
        assert replica.fs_path in line, line
        assert 'Traceback' not in replica.log()
    quota.write_text('%d\n' % (1 << 62))
    replica.start().wait_for_tid(primary.last_tid())
    stop_all(replica, primary)
    assert_same_history(primary.fs_path, replica.fs_path)


@pytest.mark.parametrize('defer', [False, True])
def test_an_invalidated_revision_is_loadable_at_once(tmp_path, defer):
    """An invalidation's revision is served before the invalidation goes."""
    replica, loaded = ReplicaStorage(data_fs(tmp_path)), []
    replica.registerDB(SimpleNamespace(invalidate=lambda tid, oids: (
        loaded.extend((replica.loadBefore(oid, p64(u64(tid) + 1))[1], tid)
                      for oid in oids))))
    replica.writer.defer_sync = defer
    replicate(replica.writer, source(tmp_path))
    replica.writer.sync()
    assert loaded and all(serial == tid for serial, tid in loaded), loaded


def pack_fsyncs(db, fsyncs, commits):
    """Commit `commits` times, pack, close: the paths the pack fsynced."""
    for i in range(commits):
        with db.transaction() as conn:
            conn.root()['x'] = i
    fsyncs.clear()
    db.pack(time.time() + 1)
    db.close()
    return fsyncs


def test_a_primary_pack_syncs_the_packed_file_and_the_switch(
        tmp_path, fsyncs):
    """A primary syncs the packed file, then the directory (unlike FS)."""
    synced = pack_fsyncs(ZODB.DB(PrimaryStorage(data_fs(tmp_path))), fsyncs, 5)
    data = str(tmp_path / 'Data.fs')
    assert synced.index(data + '.pack') < synced.index(str(tmp_path))


def test_a_promoted_replica_packs_durably_whatever_its_pack_policy(
        tmp_path, fsyncs):
    """A promoted `pack refuse` replica fsyncs the packed file too."""
    replica = ReplicaStorage(data_fs(tmp_path), pack='refuse')
    replicate(replica.writer, source(tmp_path))
    db = ZODB.DB(PrimaryStorage.promoted(replica))
    assert str(tmp_path / 'Data.fs.pack') in pack_fsyncs(db, fsyncs, 3)
