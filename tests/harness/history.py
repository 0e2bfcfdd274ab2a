"""The one reader of FileStorage histories (`transactions`: `Txn` tuples;
blob records carry `.blob`; `transactions_from`: of a live file),
`Populated`, the one pack oracle (`same_after_pack`) and the one blob
file check (`blob_problems`).
"""
import contextlib
import os
import shutil
import time
from typing import NamedTuple

import ZODB.blob
import ZODB.FileStorage
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import POSKeyError
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import z64


class Record(NamedTuple):
    oid: bytes
    tid: bytes
    data: bytes
    data_txn: bytes
    blob = None          # a BlobRecord's content (not part of the tuple)


class BlobRecord(Record):
    """A `Record` whose blob file was read: `blob` is its content."""


class Txn(NamedTuple):
    tid: bytes
    status: str
    user: bytes
    description: bytes
    extension: dict
    records: list

    def __repr__(self):
        return '<Txn %s, %d records>' % (self.tid.hex(), len(self.records))


def copy_transaction(t, fs=None):
    """A `Txn` of a FileStorage iterator's transaction `t`; with `fs` (a
    storage with blobs) blob records carry their content."""
    records = []
    for r in t:
        records.append(Record(r.oid, r.tid, r.data, r.data_txn))
        if fs is not None and r.data and ZODB.blob.is_blob_record(r.data):
            with contextlib.suppress(OSError, POSKeyError), \
                    open(fs.loadBlob(r.oid, r.tid), 'rb') as f:
                records[-1] = BlobRecord(*records[-1])
                records[-1].blob = f.read()
    return Txn(t.tid, t.status, t.user, t.description, dict(t.extension),
               records)


def iter_transactions(path, blob_dir=None):
    """`transactions(path)` one at a time (for big files)."""
    with contextlib.closing(ZODB.FileStorage.FileStorage(
            path, blob_dir=blob_dir, read_only=True)) as fs:
        for t in fs.iterator():
            yield copy_transaction(t, fs if blob_dir else None)


def transactions_from(path, start=None):
    """The transactions of the FileStorage at `path` from tid `start`, as
    `Txn`s (the file of a live process: no lock, no index)."""
    with contextlib.closing(
            ZODB.FileStorage.FileIterator(path, start)) as iterator:
        return [copy_transaction(t) for t in iterator]


def commit_object(fs, extension=None, data=b'record data'):
    """Commit `data` as a new object straight to storage `fs`; the tid."""
    meta = TransactionMetaData(b'alice', b'a test commit', extension)
    fs.tpc_begin(meta)
    fs.store(fs.new_oid(), z64, data, '', meta)
    fs.tpc_vote(meta)
    return fs.tpc_finish(meta)


def write_history(path, history):
    """A new FileStorage at `path` holding `history` (`Txn`s), written
    with `restore` as replication does; returns `path` (a str)."""
    with contextlib.closing(ZODB.FileStorage.FileStorage(
            str(path), create=True)) as fs:
        for tid, status, user, description, extension, records in history:
            txn = TransactionMetaData(user, description, extension)
            fs.tpc_begin(txn, tid, status)
            for oid, _, data, data_txn in records:
                fs.restore(oid, tid, data, '', data_txn, txn)
            fs.tpc_vote(txn)
            fs.tpc_finish(txn)
    return str(path)


def transactions(path, blob_dir=None):
    """Every transaction of the FileStorage at `path`, as `Txn`s."""
    return list(iter_transactions(path, blob_dir))


class Populated:
    """A stopped primary's file holding a `populate()` history: its size,
    `transactions()`, last tid, oids (sorted) and record data size."""

    def __init__(self, fs_path):
        self.fs_path = fs_path
        self.fs_size = os.path.getsize(fs_path)
        self.history = transactions(fs_path)
        self.last_tid = self.history[-1].tid
        records = [record for txn in self.history for record in txn.records]
        self.oids = sorted({record.oid for record in records})
        self.data_bytes = sum(len(record.data or b'') for record in records)

    def copy_to(self, node):
        """Give a stopped `node` a copy of the file and its index."""
        assert not node.running()
        for suffix in ('', '.index'):
            shutil.copyfile(self.fs_path + suffix, node.fs_path + suffix)
        return node


def blob_problems(history, source):
    """Where the blob files of `history` differ from those of the `source`
    history (`Txn`s with blobs read) it is a prefix of."""
    for txn, expected in zip(history, source):
        for r, e in zip(txn.records, expected.records):
            if e.blob is not None and r.blob != e.blob:
                yield 'blob of %s at %s differs from the source (%s)' % (
                    r.oid.hex(), r.tid.hex(), 'unreadable' if r.blob is None
                    else '%d bytes' % len(r.blob))


def assert_same_history(primary_path, replica_path):
    """The replica file holds exactly the primary's transactions;
    returns how many."""
    primary, replica = transactions(primary_path), transactions(replica_path)
    assert [t[0] for t in replica] == [t[0] for t in primary], (
        'tid lists differ: primary %d txns, replica %d txns' % (
            len(primary), len(replica)))
    for p, r in zip(primary, replica):
        assert r == p, 'transaction %s differs' % p[0].hex()
    return len(primary)


def pack_stop_tid(pack_time):
    """The tid FileStorage packs up to for `pack(pack_time)` (inclusive):
    transactions with a tid above it are copied unchanged."""
    return TimeStamp(*time.gmtime(pack_time)[:5] + (pack_time % 60,)).raw()


def load_current(path):
    """{oid: (data, serial) or 'missing'} for every oid in the index of the
    FileStorage at `path` ('missing': creation undone)."""
    with contextlib.closing(ZODB.FileStorage.FileStorage(
            path, read_only=True)) as fs:
        result = dict.fromkeys(fs._index.keys(), 'missing')
        for oid in result:
            with contextlib.suppress(POSKeyError):
                result[oid] = fs.load(oid)
        return result


def same_after_pack(p, r, stop):
    """Whether the replica's `Txn` `r` agrees with the primary's `p` (of
    one tid) after the primary packed up to tid `stop` and the replica
    did not.  After `stop`: identical, but where the primary's record has
    no back pointer the replica's may (a pack resolves pointers to removed
    records, `fspack.PackCopier.copy`).  Up to `stop`: the same metadata,
    each primary record (oid, tid, data) the replica's last of that oid
    there (the pack keeps one per oid; ZEO may store a blob record twice).
    """
    if p[0] > stop:
        return p[:5] == r[:5] and len(p[5]) == len(r[5]) and all(
            a[:3] == b[:3] and a[3] in (b[3], None)
            for a, b in zip(p[5], r[5]))
    last = {record[0]: record[:3] for record in r[5]}
    return p[2:5] == r[2:5] and all(
        last.get(record[0]) == record[:3] for record in p[5])


def assert_same_after_pack(primary_path, replica_path, pack_time):
    """The replica, which received (part of) the unpacked history, agrees
    with a primary packed at `pack_time`: the same transactions after it,
    each primary transaction agrees by `same_after_pack`, every current
    object loads the same.  Returns how many (packed transactions, later
    transactions, current objects) were compared."""
    stop = pack_stop_tid(pack_time)
    primary = transactions(primary_path)
    replica = {t[0]: t for t in transactions(replica_path)}
    replica_after = sorted(tid for tid in replica if tid > stop)
    primary_after = [t for t in primary if t[0] > stop]
    assert [t[0] for t in primary_after] == replica_after, (
        'transactions after the pack time differ: primary %d, replica %d'
        % (len(primary_after), len(replica_after)))
    packed = [t for t in primary if t[0] <= stop]
    for p in primary:
        assert p[0] in replica, (
            'transaction %s missing on the replica' % p[0].hex())
        assert same_after_pack(p, replica[p[0]], stop), (
            'transaction %s differs' % p[0].hex())
    current, replica_current = map(load_current, (primary_path, replica_path))
    for oid, state in current.items():
        assert replica_current.get(oid) == state, (
            'object %s differs' % oid.hex())
    return len(packed), len(primary_after), len(current)
