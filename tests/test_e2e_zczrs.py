"""End to end: zrsd replicating from a real zc.zrs 3.1 primary.

Everything is real: the primary is zc.zrs under ZEO's `runzeo` in a
subprocess, zrsd is started from a config file, clients are ZEO clients on
127.0.0.1, and the final check compares the two FileStorage files record by
record.  Figures (transactions, MB, catch-up time) are printed for `pytest -s`,
never asserted.
"""
import os
import time

import pytest
import transaction
import ZEO
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import POSKeyError, ReadOnlyError
from ZODB.serialize import referencesf
from ZODB.utils import z64

from harness.history import assert_same_history, transactions
from harness.process import wait_until
from harness.zczrs import Proxy, commit_change
from harness.zrsd_nodes import ZrsdNode

MB = 1024.0 * 1024.0


def last_tid_is(storage, tid, node):
    """Predicate for wait_until: storage is at `tid`; fail fast if the node
    died.  (A ClientStorage rather than ZODB.DB: a DB on an empty read-only
    replica fails trying to create the root object.)"""
    return node.check_alive() and storage.lastTransaction() == tid


def load_or_missing(storage, oid):
    try:
        return storage.load(oid)
    except POSKeyError:
        # The object's creation was undone: both sides must agree.
        return 'missing'


def test_replica_of_zczrs_primary(zczrs_populated, zczrs_primary, tmp_path,
                                  processes):
    """zrsd catches up with a zc.zrs primary, serves the same data read-only
    over ZEO, shows new commits to connected clients, refuses writes and
    pack, stops cleanly on SIGTERM and holds the primary's exact history.
    """
    primary = zczrs_primary
    populated = zczrs_populated
    primary_last = primary.last_tid()
    assert primary_last == populated.last_tid

    # `pack refuse`: the replica refuses every write, packs included
    # (packing a replica, the default, is tested in test_replica_pack).
    zrsd = ZrsdNode(tmp_path, 'zrsd', upstream=primary.repl_port,
                    zrs_lines='  pack refuse\n', register=processes)
    address = zrsd.zeo_address
    started = time.monotonic()
    zrsd.start()

    # The replica serves ZEO at once; a client connected now follows the
    # whole catch-up through invalidations.
    replica = zrsd.client()
    primary_client = primary.client(read_only=True)
    try:
        wait_until(lambda: last_tid_is(replica, primary_last, zrsd),
                   timeout=240, message='replica lastTransaction == %s'
                   % primary_last.hex())
        elapsed = time.monotonic() - started
        print('\nzc.zrs -> zrsd catch-up: %d transactions, %.1f MB of record'
              ' data (%.1f MB file) in %.2f s (%.0f txn/s, %.1f MB/s)' % (
                  len(populated.history), populated.data_bytes / MB,
                  populated.fs_size / MB, elapsed,
                  len(populated.history) / elapsed,
                  populated.fs_size / MB / elapsed))

        # Every object reads the same through ZEO on both sides.
        mismatched = []
        missing = 0
        for oid in populated.oids:
            expected = load_or_missing(primary_client, oid)
            if expected == 'missing':
                missing += 1
            if load_or_missing(replica, oid) != expected:
                mismatched.append(oid.hex())
        assert not mismatched, '%d objects differ, e.g. %s' % (
            len(mismatched), mismatched[:5])
        assert missing, 'the history should contain undone creations'

        # A commit on the primary reaches clients already connected to the
        # replica: a ClientStorage (whose cache holds the old root) and a
        # ZODB connection.
        replica_db = ZEO.DB(address, read_only=True)
        tm = transaction.TransactionManager()
        conn = replica_db.open(tm)
        try:
            root = conn.root()
            assert 'e2e-marker' not in root
            old_root_serial = replica.load(z64)[1]
            new_tid = commit_change(primary.zeo_address, 'e2e-marker',
                                    'visible')
            assert new_tid > primary_last
            wait_until(lambda: last_tid_is(replica, new_tid, zrsd),
                       message='new commit %s on the replica' % new_tid.hex())
            assert replica.load(z64)[1] == new_tid != old_root_serial

            def marker_seen():
                tm.begin()
                return root.get('e2e-marker') == 'visible'
            wait_until(marker_seen, message='e2e-marker through ZODB')

            # Writes are refused: through ZODB, through the storage API, and
            # the server will not even register a writable client.
            tm.begin()
            root['e2e-write'] = 1
            with pytest.raises(ReadOnlyError):
                tm.commit()
            tm.abort()
            with pytest.raises(ReadOnlyError):
                replica.new_oid()
            with pytest.raises(ReadOnlyError):
                replica.tpc_begin(TransactionMetaData())
            writable = ZEO.client(address, read_only_fallback=True)
            try:
                assert writable.isReadOnly(), (
                    'the replica accepted a writable ZEO registration')
                with pytest.raises(ReadOnlyError):
                    writable.tpc_begin(TransactionMetaData())
                with pytest.raises(ReadOnlyError):
                    writable.new_oid()
                # ZEO itself lets clients pack a read-only server; with
                # `pack refuse` the replica refuses.
                with pytest.raises(ReadOnlyError):
                    writable.pack(time.time(), referencesf)
            finally:
                writable.close()
            with pytest.raises(ReadOnlyError):
                replica.pack(time.time(), referencesf)
            with pytest.raises(ReadOnlyError):
                replica_db.pack()
            assert zrsd.running(), zrsd.log()
            assert replica.lastTransaction() == new_tid
            tm.begin()
            assert 'e2e-write' not in root
        finally:
            tm.abort()
            conn.close()
            replica_db.close()
    finally:
        replica.close()
        primary_client.close()

    zrsd.stop()
    # Refused writes are expected: one INFO line each, no traceback.
    assert 'Traceback' not in zrsd.log()
    assert 'client request refused, the storage is read-only' in zrsd.log()
    assert os.path.exists(zrsd.fs_path + '.index'), (
        'a clean stop should leave the FileStorage index behind')
    assert primary.stop() == 0, primary.log()

    compared = assert_same_history(primary.fs_path, zrsd.fs_path)
    assert compared == len(populated.history) + 1


def test_resume_after_sigkill_mid_catch_up(zczrs_populated, zczrs_primary,
                                           tmp_path, processes):
    """SIGKILL zrsd half-way through catch-up; restarted on the same files it
    resumes from the last committed transaction and ends identical.

    "Half-way" does not depend on timing: the replication connection goes
    through a proxy that forwards only half of the primary's stream, then
    holds it (usually in the middle of a transaction).  The proxy also shows
    the tid each zrsd asked to start from.
    """
    primary = zczrs_primary
    populated = zczrs_populated
    history = populated.history
    primary_last = populated.last_tid
    tids = [t[0] for t in history]

    proxy = Proxy(primary.repl_port, hold_after=populated.fs_size // 2)
    try:
        zrsd = ZrsdNode(tmp_path, 'zrsd', upstream=proxy.port,
                        register=processes).start()
        first = proxy.wait_for_link(0)
        assert first.handshake() == (b'zrs2.0', z64)

        replica = zrsd.client()
        try:
            wait_until(lambda: not last_tid_is(replica, z64, zrsd),
                       timeout=120, message='first replicated transaction')
            wait_until(lambda: zrsd.check_alive() and first.held.is_set(),
                       timeout=120,
                       message='zrsd to read half of the stream')
            partial = replica.lastTransaction()
        finally:
            replica.close()
        assert partial in tids and partial < primary_last
        zrsd.kill()

        # What survived the kill is a prefix of the primary's history.
        committed = transactions(zrsd.fs_path)
        assert committed, 'nothing committed before the kill'
        assert committed == history[:len(committed)]
        assert len(committed) < len(history)
        assert committed[-1][0] >= partial
        resume_tid = committed[-1][0]

        proxy.hold_after = None  # later connections go through
        started = time.monotonic()
        zrsd.start()
        second = proxy.wait_for_link(1)
        assert second.handshake() == (b'zrs2.0', resume_tid), (
            'zrsd should resume after its last committed transaction %s'
            % resume_tid.hex())

        replica = zrsd.client()
        try:
            wait_until(lambda: last_tid_is(replica, primary_last, zrsd),
                       timeout=240, message='replica caught up after restart')
        finally:
            replica.close()
        elapsed = time.monotonic() - started
        print('\nresume: SIGKILLed with %d/%d transactions committed,'
              ' restarted from %s, caught up %d more in %.2f s' % (
                  len(committed), len(history), resume_tid.hex(),
                  len(history) - len(committed), elapsed))

        zrsd.stop()
    finally:
        proxy.close()
    assert primary.stop() == 0, primary.log()
    assert assert_same_history(primary.fs_path, zrsd.fs_path) == len(history)
