"""Interoperability with zc.zrs 3.1.0 in both roles.

- A zc.zrs secondary (on ZODB 5.5.1, in its own venv: see `peers`)
  replicating from a zrsd primary ends with the primary's exact history.
- A zrsd replica with a blob directory, replicating from a zc.zrs primary
  with blobs (zrs2.1), serves every blob and ends with identical files.

Both sides are real processes on 127.0.0.1, written to and read through real
ZEO clients; the final checks compare the FileStorage files record by record.
"""
import os
import random
import time

import pytest
import transaction
import ZEO
import ZODB.blob
from persistent.mapping import PersistentMapping

from harness import peers, zczrs
from harness.history import assert_same_history, transactions
from harness.process import wait_until
from harness.zrsd_nodes import ZrsdNode


@pytest.fixture(scope='module')
def peer_python():
    """The zc.zrs/ZODB 5.5.1 venv's python (built on first use)."""
    started = time.monotonic()
    python = peers.peer_python()
    print('\npeer venv %s ready in %.1f s' % (
        peers.ZCZRS_VENV, time.monotonic() - started))
    return python


def test_zczrs_secondary_of_zrsd_primary(peer_python, tmp_path, processes):
    """A zc.zrs 3.1.0 secondary follows a zrsd primary through catch-up and
    live commits (undos and extension data included) and ends identical,
    on one connection (no checksum failure, no reconnect)."""
    primary = ZrsdNode(tmp_path, 'primary', register=processes).start()
    # Part of the history exists before the secondary connects (catch-up),
    # the rest is committed while it is connected (live streaming).
    before = zczrs.populate(primary.zeo_address, transactions=150,
                            seed=1, undo_every=60)

    secondary = peers.ZcZrsSecondary(tmp_path / 'secondary',
                                     primary.repl_port, register=processes)
    secondary.start(peer_python)
    after = zczrs.populate(primary.zeo_address, transactions=150,
                           seed=2, undo_every=50)
    assert before.undos and after.undos and after.creation_undos

    last = primary.last_tid()
    assert last == after.last_tid
    client = secondary.client()
    try:
        peers.wait_for_tid(client, last, [primary, secondary],
                           message='zc.zrs secondary at %s' % last.hex())
    finally:
        client.close()

    assert secondary.stop() == 0, secondary.log()
    assert primary.stop() == 0, primary.log()
    count = assert_same_history(primary.fs_path, secondary.fs_path)
    assert count == before.transactions + after.transactions + 1  # + root

    log = primary.log()
    assert log.count('streaming transactions after 0000000000000000 '
                     '(zrs2.0)') == 1, log
    assert ' ERROR ' not in log, log
    secondary_log = secondary.log()
    assert 'Traceback' not in secondary_log, secondary_log
    assert secondary_log.count(': Connected') == 1, secondary_log
    print('\nzrsd primary -> zc.zrs secondary: %d transactions identical'
          % count)


def test_zczrs_secondary_refused_by_zrsd_primary(peer_python, tmp_path,
                                                 processes):
    """The history guard protects zc.zrs secondaries too: one holding
    another database's history is refused by a zrsd primary, and nothing
    is appended to its file."""
    a = ZrsdNode(tmp_path, 'a', register=processes).start()
    last = zczrs.commit_change(a.zeo_address, 'in-a', 1)
    secondary = peers.ZcZrsSecondary(tmp_path / 'secondary', a.repl_port,
                                     register=processes)
    secondary.start(peer_python)
    client = secondary.client()
    try:
        peers.wait_for_tid(client, last, [a, secondary])
    finally:
        client.close()
    assert secondary.stop() == 0, secondary.log()
    history = transactions(secondary.fs_path)
    # Another database, created later: all of its tids are newer.
    b = ZrsdNode(tmp_path, 'b', register=processes).start()
    zczrs.commit_change(b.zeo_address, 'in-b', 1)
    secondary.primary_port = b.repl_port
    secondary.start(peer_python)
    # zc.zrs retries every second: refused at least twice.
    wait_until(lambda: b.log().count('secondary refused') >= 2, 60,
               message='the zrsd primary refuses the zc.zrs secondary twice')
    errors = [line for line in b.log().splitlines() if ' ERROR ' in line]
    assert len(errors) == 1, errors
    assert 'its last transaction %s is not in this storage' % last.hex() \
        in errors[0], errors[0]
    client = secondary.client()
    try:
        assert client.lastTransaction() == last
    finally:
        client.close()
    assert secondary.stop() == 0, secondary.log()
    assert b.stop() == 0, b.log()
    assert a.stop() == 0, a.log()
    assert transactions(secondary.fs_path) == history


# Blob sizes: empty, tiny, around the 65536-byte block size of the 'B'
# message, and several blocks.
BLOB_SIZES = [0, 1, 1000, 65535, 65536, 65537, 200000]


def _commit_blobs(address, blob_dir, rng, start, sizes, expected):
    """Commit one blob per transaction under root['blobs'][key]."""
    db = ZEO.DB(address, blob_dir=blob_dir, shared_blob_dir=False)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        tm.begin()
        root = conn.root()
        if 'blobs' not in root:
            root['blobs'] = PersistentMapping()
            tm.get().note('blob container')
            tm.commit()
        blobs = root['blobs']
        for key, size in enumerate(sizes, start):
            tm.begin()
            data = rng.randbytes(size)
            blobs[key] = ZODB.blob.Blob(data)
            tm.get().note('blob %d (%d bytes)' % (key, size))
            tm.get().setExtendedInfo('blob-size', size)
            tm.commit()
            expected[key] = data
        return db.lastTransaction()
    finally:
        tm.abort()
        conn.close()
        db.close()


def _change_and_undo(address, blob_dir, rng, changed, undone, expected):
    """Rewrite blob `changed`; rewrite blob `undone` and undo that."""
    db = ZEO.DB(address, blob_dir=blob_dir, shared_blob_dir=False)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        blobs = conn.root()['blobs']
        tm.begin()
        data = rng.randbytes(150000)
        with blobs[changed].open('w') as f:
            f.write(data)
        tm.get().note('change blob %d' % changed)
        tm.commit()
        expected[changed] = data

        tm.begin()
        with blobs[undone].open('w') as f:
            f.write(b'this change is undone')
        tm.commit()
        tm.begin()
        db.undo(db.undoLog(0, 1)[0]['id'], tm.get())
        tm.get().note('undo')
        tm.commit()
        return db.lastTransaction()
    finally:
        tm.abort()
        conn.close()
        db.close()


def _read_blobs(address, blob_dir, read_only):
    """{key: bytes} of every blob under root['blobs'], read over ZEO."""
    db = ZEO.DB(address, blob_dir=blob_dir, shared_blob_dir=False,
                read_only=read_only)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        blobs = conn.root()['blobs']
        result = {}
        for key in blobs:
            with blobs[key].open('r') as f:
                result[key] = f.read()
        return result
    finally:
        tm.abort()
        conn.close()
        db.close()


def _blob_files(blob_dir):
    """{relative path: content} of a server blob directory, without its
    scratch directory `tmp/`."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(blob_dir):
        if dirpath == blob_dir and 'tmp' in dirnames:
            dirnames.remove('tmp')
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, blob_dir)] = f.read()
    return files


def test_zrsd_replica_of_zczrs_blob_primary(tmp_path, processes):
    """zrsd with a blob-dir replicates a zc.zrs primary with blobs (zrs2.1):
    blobs of 0 to 200000 bytes (several 65536-byte blocks), a changed blob
    and an undone blob change, committed before and after zrsd connects;
    a ZEO client of the replica reads every blob as written; histories and
    blob files end identical."""
    rng = random.Random(2.1)
    expected = {}
    primary = zczrs.ZcZrsPrimary(tmp_path / 'primary', blobs=True,
                                 register=processes).start()
    _commit_blobs(primary.zeo_address, str(tmp_path / 'writer-1'), rng, 0,
                  BLOB_SIZES[:4], expected)

    zrsd = ZrsdNode(tmp_path, 'replica', upstream=primary.repl_port,
                    blobs=True, register=processes).start()

    _commit_blobs(primary.zeo_address, str(tmp_path / 'writer-2'), rng, 4,
                  BLOB_SIZES[4:], expected)
    last = _change_and_undo(primary.zeo_address, str(tmp_path / 'writer-3'),
                            rng, changed=2, undone=5, expected=expected)
    assert primary.last_tid() == last

    address = zrsd.zeo_address
    client = zrsd.client()
    try:
        peers.wait_for_tid(client, last, [zrsd, primary],
                           message='zrsd replica at %s' % last.hex())
    finally:
        client.close()

    on_replica = _read_blobs(address, str(tmp_path / 'reader-replica'),
                             read_only=True)
    on_primary = _read_blobs(primary.zeo_address,
                             str(tmp_path / 'reader-primary'),
                             read_only=True)
    assert sorted(on_replica) == sorted(expected) == list(range(7))
    for key in expected:
        assert on_primary[key] == expected[key], key
        assert on_replica[key] == expected[key], 'blob %d differs' % key
    assert on_replica[0] == b''

    assert zrsd.stop() == 0, zrsd.log()
    assert primary.stop() == 0, primary.log()
    count = assert_same_history(primary.fs_path, zrsd.fs_path)
    primary_files = _blob_files(primary.blob_dir)
    replica_files = _blob_files(zrsd.blob_dir)
    assert sorted(replica_files) == sorted(primary_files)
    for path in primary_files:
        assert replica_files[path] == primary_files[path], path
    blobs = [p for p in primary_files if p.endswith('.blob')]
    # 7 blobs, 2 changes, the undo's copy of the restored revision.
    assert len(blobs) == 10, sorted(primary_files)
    assert 'connected (zrs2.1)' in zrsd.log()
    print('\nzc.zrs blob primary -> zrsd: %d transactions, %d blob files '
          '(%d bytes) identical' % (count, len(blobs),
                                    sum(len(primary_files[p])
                                        for p in blobs)))
