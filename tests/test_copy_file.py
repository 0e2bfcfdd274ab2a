"""A new or far-behind replica copies its primary's file (zrsd-seed1)
before it opens, then replicates with ZRS; anything unusual falls back to
ZRS, and the replica always ends byte-identical to its primary."""
import filecmp
import os
import queue
import shutil
import time
from contextlib import closing
from pathlib import Path

import pytest
import ZODB
import ZODB.blob
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.fsIndex import fsIndex
from ZODB.serialize import referencesf

from harness.chaos import ChaosProxy
from harness.history import assert_same_after_pack
from harness.process import stop_all, wait_until
from harness.zczrs import commit_change
from harness.zrsd_nodes import blob_db, blob_files
from zrsd import internals
from zrsd.primary.history import TidIndex
from zrsd.primary.seeder import PrefixHash, Seeder
from zrsd.primary.storage import CommitNotifier
from zrsd.primary.streamer import Source

CRASH_SITE = os.path.join(os.path.dirname(__file__), 'copy_crash_site')


def copying(node, upstream, policy='new', **options):
    """An unstarted replica of port `upstream` copying by `policy`."""
    return node('replica', upstream=upstream, copy_file=policy,
                zrs_lines='  copy-file-minimum 0\n', **options)


def fill(node, transactions=30, size=100000):
    """Commit `transactions` records of `size` bytes (a blob in every third
    if `node` has blobs); returns the last tid."""
    blobs = node.blob_dir is not None
    with closing(blob_db(node, os.path.join(node.directory, 'cache'))
                 if blobs else node.db()) as db:
        for i in range(transactions):
            with db.transaction() as conn:
                conn.root()[i] = PersistentMapping(data=os.urandom(size))
                if blobs and i % 3 == 0:
                    conn.root()['blob%d' % i] = ZODB.blob.Blob(
                        os.urandom(size))
        return db.storage.lastTransaction()


def same_files(primary, replica, index=True):
    """Stop both: identical files, no marker; (`index`) a sound index."""
    stop_all(replica, primary)
    assert filecmp.cmp(primary.fs_path, replica.fs_path, shallow=False)
    if primary.blob_dir:
        assert blob_files(primary.blob_dir) == blob_files(replica.blob_dir)
    assert not os.path.exists(replica.fs_path + '.seeding')
    if index:
        saved = fsIndex.load(replica.fs_path + '.index')
        rebuilt = os.path.join(replica.directory, 'rebuilt.fs')
        shutil.copyfile(replica.fs_path, rebuilt)
        with closing(FileStorage(rebuilt, read_only=True)) as fs:
            # The test reads what FileStorage built.
            assert dict(saved['index'].items()) == dict(fs._index.items())
        assert saved['pos'] == os.path.getsize(replica.fs_path)


def crash_env(stage):
    """The environment of a zrsd that exits at `stage` of a copy (the
    crash site first on the path, before whatever zrsd is tested)."""
    path = [CRASH_SITE] + [p for p in [os.environ.get('PYTHONPATH')] if p]
    return {'PYTHONPATH': os.pathsep.join(path),
            'ZRSD_COPY_CRASH_AT': stage}


@pytest.mark.parametrize('blobs', [False, True])
def test_a_new_replica_copies_the_file(node, blobs):
    primary = node('primary', blobs=blobs).start()
    last = fill(primary)
    replica = copying(node, primary.repl_port, blobs=blobs).start()
    assert 'copied 3.' in replica.log()   # MB of the primary's file
    # FileStorage opened it with the index made during the copy.
    assert 'Ignoring index' not in replica.log()
    assert 'requesting transactions after %s' % last.hex() in replica.log()
    assert replica.last_tid() == last
    replica.wait_for_tid(commit_change(primary.zeo_address, 'later', 1))
    same_files(primary, replica)


def test_a_zczrs_primary_is_replicated_with_zrs(zczrs_primary, node):
    replica = copying(node, zczrs_primary.repl_port).start()
    replica.wait_for_tid(zczrs_primary.last_tid())
    assert 'does not copy files (not zrsd); replicating with ZRS' in \
        replica.log()
    replica.stop()


def test_a_prefix_that_differs_falls_back_to_zrs(node):
    """A prefix with other bytes is refused a copy; ZRS replicates the rest."""
    primary = node('primary').start()
    middle = fill(primary, transactions=5)
    primary.stop()
    data = bytearray(Path(primary.fs_path).read_bytes())
    data[-100] ^= 0xff          # inside the last record's data
    replica = copying(node, primary.repl_port, policy='on')
    Path(replica.fs_path).write_bytes(data)
    primary.start()
    last = fill(primary, transactions=5)
    replica.start().wait_for_tid(last)
    assert "first %d bytes differ from the primary's" % len(data) in \
        replica.log()
    assert 'requesting transactions after %s' % middle.hex() in replica.log()
    stop_all(replica, primary)


def copy_through_proxy(node, megabytes):
    """A replica copying a 30 MB file at 10 MB/s, `megabytes` in."""
    primary = node('primary').start()
    last = fill(primary, transactions=60, size=500000)
    proxy = ChaosProxy(primary.repl_port, socket_buffer=65536)
    proxy.throttle(10 << 20)
    replica = copying(node, proxy.port).launch()
    wait_until(lambda: proxy.bytes_down > megabytes << 20,
               message='%d MB of the copy through' % megabytes)
    return primary, proxy, replica, last


@pytest.mark.parametrize('victim', ['replica', 'primary'])
def test_a_copy_killed_midway_resumes(node, victim):
    """kill -9 of either side mid-copy: the replica ends byte-identical."""
    primary, proxy, replica, last = copy_through_proxy(node, 12)
    with closing(proxy):
        (replica if victim == 'replica' else primary).kill()
        proxy.throttle(None)
        (primary.start if victim == 'primary' else replica.launch)()
        replica.wait_for_tid(last)
        replica.wait_for_tid(commit_change(primary.zeo_address, 'later', 1))
    same_files(primary, replica, index=False)


def test_a_pack_of_the_primary_during_a_copy(node):
    """A pack mid-copy: the copy stops, ZRS goes on from the packed file."""
    primary, proxy, replica, _ = copy_through_proxy(node, 8)
    with closing(proxy):
        with closing(primary.client(read_only=False)) as storage:
            pack_time = time.time()
            storage.pack(pack_time, referencesf)
        proxy.throttle(None)
        replica.wait_for_tid(commit_change(primary.zeo_address,
                                           'after the pack', 1))
    assert 'the primary was packed during the copy' in replica.log()
    stop_all(replica, primary)
    assert_same_after_pack(primary.fs_path, replica.fs_path, pack_time)


@pytest.mark.parametrize('victim, stage', [
    ('replica', 'query'), ('replica', 'proof'), ('replica', 'data:3'),
    ('replica', 'blob:2'), ('replica', 'sync'), ('replica', 'end'),
    ('replica', 'index'), ('primary', 'prefix'), ('primary', 'send:4'),
    ('primary', 'finish')])
def test_a_copy_crashed_at_every_stage_resumes(node, victim, stage):
    """A crash of either side at each stage of a copy: the replica recovers."""
    primary = node('primary', blobs=True).start()
    fill(primary, transactions=20, size=200000)
    replica = copying(node, primary.repl_port, blobs=True)
    crashing = primary if victim == 'primary' else replica
    crashing.env = crash_env(stage)
    if victim == 'primary':
        primary.stop()
        primary.start()
    replica.launch()
    assert crashing.wait(60) == 9
    crashing.env = None
    crashing.launch()
    replica.wait_for_tid(commit_change(primary.zeo_address,
                                       'after the crash', 1))
    same_files(primary, replica)


def test_a_replica_far_behind_copies_the_rest(node):
    """copy-file on: a replica behind proves its prefix and copies the rest."""
    primary = node('primary').start()
    fill(primary)
    replica = copying(node, primary.repl_port, policy='on')
    replica.start().stop()
    length = os.path.getsize(replica.fs_path)
    last = fill(primary, transactions=60)
    replica.start()
    assert "copying the primary's file from %d to %d bytes" % (
        length, os.path.getsize(primary.fs_path)) in replica.log()
    assert replica.last_tid() == last
    same_files(primary, replica)


def test_an_interrupted_copy_then_copy_file_off(node):
    """An interrupted copy, then copy-file off: cut back, ZRS goes on."""
    primary = node('primary').start()
    last = fill(primary)
    replica = copying(node, primary.repl_port)
    replica.env = crash_env('data:3')
    replica.launch()
    assert replica.wait(60) == 9
    assert os.path.exists(replica.fs_path + '.seeding')
    replica.env, replica.copy_file = None, 'off'
    replica.start()
    assert 'a copy was interrupted: the file is cut back' in replica.log()
    assert not os.path.exists(replica.fs_path + '.seeding')
    replica.wait_for_tid(last)
    same_files(primary, replica, index=False)


def test_a_pack_after_the_primary_hashed_its_prefix_refuses_the_copy(tmp_path):
    """The primary hashes its prefix when the replica asks; a pack before
    the proof comes means another file: no copy, the replica uses ZRS."""
    with closing(ZODB.DB(str(tmp_path / 'Data.fs'))) as db:
        for i in range(5):
            with db.transaction() as conn:
                conn.root()['x'] = i
        fs = db.storage
        _, length = internals.committed_file(fs)
        source = Source(fs, CommitNotifier(), TidIndex())
        prefix = PrefixHash(source, length)
        prefix._thread.join(30)
        db.pack(time.time() + 1)
        payloads, ended = [], queue.Queue()
        seeder = Seeder(source, length, fs.lastTransaction(), prefix._digest,
                        prefix, done=ended.put, name='test',
                        send=lambda chunks: payloads.extend(chunks[1::2]))
        seeder.start()
        assert ended.get(timeout=30) is None
    assert [p[:1] for p in payloads] == [b'N']
    assert b'packed since it hashed' in payloads[0]
