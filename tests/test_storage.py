"""The replica storage with the state machine, in one process: the seed
scenario, a crash between `tpc_vote` and `tpc_finish`, ZODB's read-only
storage tests."""
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import closing
from unittest import mock

import persistent.mapping
import pytest
import transaction
import ZODB
import ZODB.FileStorage
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import POSKeyError, ReadOnlyError
from ZODB.serialize import referencesf
from ZODB.tests import ReadOnlyStorage, StorageTestBase
from ZODB.utils import p64, z64

from zrsd.internals import TransactionBuffer
from zrsd.primary.storage import PrimaryStorage
from zrsd.protocol import ProtocolError
from zrsd.replica.receiver import Receiver
from zrsd.replica.storage import ReplicaStorage, last_committed_tid

from harness.history import assert_same_history, transactions
from harness.process import wait_until
from harness.stream import Stream, replicate


def connect(writer):
    """feed(txns, digest=None): sends `txns` to `writer` on one connection
    (the checksum runs over its life); `digest` overrides their checksums."""
    start = writer.last_applied()
    stream, receiver = Stream(start), Receiver(writer, start)

    def feed(txns, digest=None):
        for txn in txns:
            stream.transaction(txn, digest=digest)
        for payload in stream.take_payloads():
            receiver.frame_received(payload)
    return feed


class Primary:
    """A primary FileStorage, a DB and a connection to change it."""

    def __init__(self, path):
        self.path, self.sent = path, z64
        self.fs = ZODB.FileStorage.FileStorage(path)
        self.db = ZODB.DB(self.fs)
        self.root = self.db.open().root()

    def commit(self, items):
        """One transaction setting `items` in the root."""
        self.root.update(items)
        transaction.commit()

    def new_transactions(self):
        """The transactions committed since the last call, as `Txn`s."""
        txns = [t for t in transactions(self.path) if t.tid > self.sent]
        self.sent = txns[-1].tid if txns else self.sent
        return txns


@pytest.fixture
def primary(tmp_path):
    primary = Primary(str(tmp_path / 'primary.fs'))
    yield primary
    primary.db.close()


def open_replica(tmp_path, **kw):
    return ReplicaStorage(ZODB.FileStorage.FileStorage(
        str(tmp_path / 'Data.fs')), **kw)


def same_history(tmp_path, primary):
    """Close `primary`; the transactions the replica has in common."""
    primary.db.close()
    return assert_same_history(str(tmp_path / 'primary.fs'),
                               str(tmp_path / 'Data.fs'))


def test_seed_scenario(tmp_path, primary):
    replica = open_replica(tmp_path)
    feed = connect(replica.writer)
    # The initial transaction creates the root.
    feed(primary.new_transactions())
    tm = transaction.TransactionManager()
    conn = ZODB.DB(replica).open(tm)
    assert conn.root() == {}
    # A change on the primary is visible on the replica after a sync.
    primary.commit({'x': persistent.mapping.PersistentMapping()})
    feed(primary.new_transactions())
    tm.begin()
    assert conn.root() == {'x': {}}
    # The undo of that change, likewise.
    primary.db.undo(primary.db.undoLog(0, 1)[0]['id'])
    transaction.commit()
    feed(primary.new_transactions())
    tm.begin()
    assert conn.root() == {}
    # Writing through the replica is refused.
    conn.root()['y'] = 1
    with pytest.raises(ReadOnlyError):
        tm.commit()
    tm.abort()
    conn.db().close()
    assert same_history(tmp_path, primary) == 3


def test_bad_checksum_leaves_no_partial_transaction(tmp_path, primary):
    path = str(tmp_path / 'Data.fs')
    replica = open_replica(tmp_path)
    feed = connect(replica.writer)
    feed(primary.new_transactions())
    good, size = replica.lastTransaction(), os.path.getsize(path)
    primary.commit({'big': b'x' * 100000})
    with pytest.raises(ProtocolError, match='checksum mismatch'):
        feed(primary.new_transactions(), digest=b'\0' * 16)
    assert replica.lastTransaction() == good
    replica.close()
    assert os.path.getsize(path) == size
    with closing(ZODB.FileStorage.FileStorage(path)) as reopened:
        assert reopened.lastTransaction() == good


CRASH_BETWEEN_VOTE_AND_FINISH = textwrap.dedent('''
    import os, pickle, sys
    import ZODB.FileStorage
    from zrsd.replica.storage import ReplicaStorage
    fs = ZODB.FileStorage.FileStorage(sys.argv[1])
    replica = ReplicaStorage(fs)
    meta, records = pickle.loads(bytes.fromhex(sys.argv[2]))
    replica.writer.begin(*meta)
    for record in records:
        replica.writer.store(*record)
    fs.tpc_vote(replica.writer._transaction)
    os._exit(9)  # killed between tpc_vote and tpc_finish
''')


def test_crash_between_vote_and_finish_resumes_without_loss(tmp_path, primary):
    """After a kill there the replica resumes from the last committed tid
    (not FileStorage's last, which was never committed)."""
    replica_path = str(tmp_path / 'Data.fs')
    for i in range(3):
        primary.commit({i: persistent.mapping.PersistentMapping(n=i)})
    txns = primary.new_transactions()
    replica = open_replica(tmp_path)
    replicate(replica.writer, txns[:-1])
    replica.close()
    last = pickle.dumps((txns[-1][:5], [tuple(r) for r in txns[-1][5]]))
    subprocess.run([sys.executable, '-c', CRASH_BETWEEN_VOTE_AND_FINISH,
                    replica_path, last.hex()])
    # The pitfall itself, so this test notices if FileStorage changes.
    fs = ZODB.FileStorage.FileStorage(replica_path)
    previous = txns[-2].tid
    assert (fs.lastTransaction(), last_committed_tid(fs)) == (
        txns[-1].tid, previous)
    replica = ReplicaStorage(fs)
    assert replica.resume_tid == replica.lastTransaction() == previous
    replicate(replica.writer, txns[-1:])
    replica.close()
    assert same_history(tmp_path, primary) == 4


def test_read_only_face(tmp_path):
    replica = open_replica(tmp_path, pack='refuse')
    assert replica.isReadOnly()
    for call in (lambda: replica.new_oid(),
                 lambda: replica.pack(0, None),
                 lambda: replica.tpc_begin(object()),
                 lambda: replica.store(z64, z64, b'', '', None),
                 lambda: replica.undo(z64, None),
                 lambda: replica.restore(z64, z64, b'', '', None, None)):
        with pytest.raises(ReadOnlyError):
            call()
    replica.close()


def test_pack_keeps_the_last_transaction_and_replication_going(
        tmp_path, primary):
    """A pack to "now" shrinks the file, keeps the last transaction whole,
    wakes the streamers; deferred fsyncs and new commits go on."""
    for i in range(20):
        primary.commit({'x': b'%d' % i * 1000})
    replica = open_replica(tmp_path)
    replica.writer.defer_sync = True
    feed = connect(replica.writer)
    feed(primary.new_transactions())
    last, size = replica.writer.last_applied(), replica.getSize()
    generation = replica.commits.generation
    assert replica.lastTransaction() == z64   # not fsynced: not published
    replica.pack(time.time() + 60, referencesf)
    assert replica.getSize() < size
    # The pack fsyncs, so publishes, what it copies; it wakes streamers.
    assert (replica.lastTransaction(), last_committed_tid(
        replica.file_storage)) == (last, last)
    assert replica.commits.generation >= generation + 1
    assert [t.status for t in replica.iterator(last)] == [' ']
    replica.writer.sync()
    primary.commit({'x': b'after the pack'})
    feed(primary.new_transactions())
    replica.writer.sync()
    assert replica.lastTransaction() == primary.fs.lastTransaction()
    assert replica.load(z64) == primary.fs.load(z64)
    replica.close()
    with closing(open_replica(tmp_path)) as replica:
        assert replica.resume_tid == primary.fs.lastTransaction()


class ReplicaReadOnlyStorageTests(StorageTestBase.StorageTestBase,
                                  ReadOnlyStorage.ReadOnlyStorage):
    """ZODB's read-only storage tests, the replica as the read-only one."""

    def setUp(self):
        super().setUp()
        self.open()

    def open(self, read_only=False):
        fs = ZODB.FileStorage.FileStorage('Data.fs')
        self._storage = ReplicaStorage(fs) if read_only else fs


def test_group_commit_defers_fsync_until_sync(tmp_path, primary, monkeypatch):
    for i in range(3):
        primary.commit({i: i})
    replica = open_replica(tmp_path)
    fsyncs = []
    for name in ('fsync', 'fdatasync'):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real: fsyncs.append(fd)
                            or real(fd))
    invalidated = []
    replica.registerDB(mock.Mock(invalidate=lambda tid, oids:
                                 invalidated.append(tid)))
    writer = replica.writer
    writer.defer_sync = True
    replicate(writer, primary.new_transactions())
    assert (len(fsyncs), writer.unsynced) == (0, 4)
    # Durable first, then visible: before the group's fsync, ZEO clients
    # and a cascade's streamers see nothing of it.
    assert replica.lastTransaction() == z64
    assert invalidated == []
    with pytest.raises(POSKeyError):
        replica.load(z64)
    assert replica.loadBefore(z64, p64(2 ** 63)) is None
    assert replica.committed_file()[1] == 4
    writer.sync()   # the group's data, then its status bytes
    assert (len(fsyncs), writer.unsynced) == (2, 0)
    tids = [t.tid for t in primary.fs.iterator()]
    assert replica.lastTransaction() == tids[-1]
    assert invalidated == tids
    assert replica.load(z64) == primary.fs.load(z64)
    assert replica.committed_file()[1] == replica.getSize()
    writer.sync()  # nothing left to sync
    assert len(fsyncs) == 2
    writer.defer_sync = False
    primary.commit({'x': 1})
    replicate(writer, primary.new_transactions())
    assert len(fsyncs) == 4  # not deferring: data, status byte
    replica.close()
    assert same_history(tmp_path, primary) == 5


def test_transaction_buffer_spills_big_transactions_to_disk(tmp_path):
    path = str(tmp_path / 'Data.fs.tmp')
    buffer = TransactionBuffer(path, limit=1000)
    buffer.write(b'a' * 600)
    assert not buffer.spilled and not os.path.exists(path)
    buffer.write(b'b' * 600)          # past the limit: moves to the file
    assert buffer.spilled and buffer.tell() == 1200
    buffer.seek(0)
    assert buffer.read(1200) == b'a' * 600 + b'b' * 600
    buffer.seek(0)                    # the next transaction
    buffer.write(b'c' * 10)
    assert not buffer.spilled and buffer.tell() == 10
    buffer.seek(0)
    assert buffer.read(10) == b'c' * 10
    buffer.close()


def test_big_transaction_through_the_buffer(tmp_path, primary):
    """A transaction bigger than the in-memory limit replicates intact."""
    primary.commit({i: persistent.mapping.PersistentMapping(  # 20 MB > 16
        data=os.urandom(1 << 20)) for i in range(20)})
    primary.commit({'small': 1})
    replica = open_replica(tmp_path)
    replicate(replica.writer, primary.new_transactions())
    replica.close()
    assert same_history(tmp_path, primary) == 3


def test_close_releases_commits_held_until_registered(tmp_path, primary):
    """A commit held until ZEO registers goes through if the storage closes
    first (runzeo could not listen): stopping cannot hang."""
    replica = open_replica(tmp_path)
    replica.hold_commits_until_registered()
    applier = threading.Thread(target=replicate, daemon=True, args=(
        replica.writer, primary.new_transactions()))
    applier.start()
    wait_until(lambda: replica.file_storage._nextpos,
               message='the commit voted, at the gate')
    assert applier.is_alive()
    # As zrsd.daemon.node does: stop replication (here: wait for the applier)
    # before the storage closes.
    replica.before_close = lambda: applier.join(30)
    replica.close()
    assert not applier.is_alive()
    assert same_history(tmp_path, primary) == 1


def test_start_removes_temporary_blob_files_of_an_interrupted_transaction(
        tmp_path):
    """The next start removes our temporary blob files left by a kill."""
    fs = ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs'),
                                      blob_dir=str(tmp_path / 'blobs'))
    files = [pathlib.Path(fs.temporaryDirectory(), name) for name in (
        'zrsd-k3j2h1.blob', 'zrsd-a9b8c7.blob', 'BUSHY-not-ours.tmp')]
    for path in files:
        path.write_bytes(b'half a blob')
    with closing(ReplicaStorage(fs)) as replica:
        assert [path.exists() for path in files] == [False, False, True]
        # What the writer makes now is still ours to remove next time.
        with replica.writer.open_blob() as blob:
            assert os.path.basename(blob.name).startswith('zrsd-')
            assert blob.name.endswith('.blob')


def test_closing_a_primary_aborts_a_commit_in_progress(tmp_path):
    """Closing aborts a voted ZEO commit and removes its blob file (which
    FileStorage's close leaves behind, an orphan)."""
    blob_dir, path = tmp_path / 'blobs', str(tmp_path / 'Data.fs')
    storage = PrimaryStorage(ZODB.FileStorage.FileStorage(
        path, blob_dir=str(blob_dir)))
    meta = TransactionMetaData()
    storage.tpc_begin(meta)
    upload = tmp_path / 'upload.blob'
    upload.write_bytes(b'a blob that is never committed')
    storage.storeBlob(storage.new_oid(), z64, b'blob record data',
                      str(upload), '', meta)
    storage.tpc_vote(meta)
    assert len(list(blob_dir.rglob('*.blob'))) == 1
    storage.close()
    assert list(blob_dir.rglob('*.blob')) == []
    with closing(ZODB.FileStorage.FileStorage(path, read_only=True)) as fs:
        assert fs.lastTransaction() == z64


def test_last_invalidations_are_filestorages_read_from_headers(
        tmp_path, zczrs_populated):
    """ZEO's queue at start: the same as FileStorage's own, undos (back
    pointers) and a packed file included, up to what is published."""
    path = shutil.copyfile(zczrs_populated.fs_path, str(tmp_path / 'Data.fs'))

    def same(storage, fs):
        for count in (0, 1, 250, 10 ** 6):
            assert storage.lastInvalidations(count) == [
                (tid, list(oids)) for tid, oids in fs.lastInvalidations(count)]

    with closing(PrimaryStorage(ZODB.FileStorage.FileStorage(path))) as st:
        same(st, st.file_storage)
        st.file_storage.pack(time.time(), referencesf)
        same(st, st.file_storage)
    with closing(ReplicaStorage(ZODB.FileStorage.FileStorage(path))) as st:
        same(st, st.file_storage)
