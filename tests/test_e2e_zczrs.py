"""End to end: zrsd replicating from a real zc.zrs 3.1 primary (under
runzeo), compared record by record; figures are printed for `pytest -s`."""
import os
import time
from contextlib import ExitStack, closing

import pytest
from ZODB.Connection import TransactionMetaData
from ZODB.POSException import POSKeyError, ReadOnlyError
from ZODB.serialize import referencesf
from ZODB.utils import z64

from harness.chaos import ChaosProxy
from harness.history import assert_same_history, transactions
from harness.process import wait_until
from harness.zczrs import commit_change
from harness.zrsd_nodes import MB, opened, wait_for_value


def load_or_missing(storage, oid):
    try:
        return storage.load(oid)
    except POSKeyError:  # an undone creation: both sides must agree
        return 'missing'


def test_replica_of_zczrs_primary(zczrs_populated, zczrs_primary, node):
    """zrsd catches up with a zc.zrs primary, serves its data read-only,
    shows new commits, refuses writes and pack, stops cleanly, identical."""
    primary, populated = zczrs_primary, zczrs_populated
    assert primary.last_tid() == populated.last_tid
    primary_last = populated.last_tid
    # `pack refuse`: refuse every write, packs included.
    zrsd = node('zrsd', upstream=primary.repl_port,
                zrs_lines='  pack refuse\n')
    started = time.monotonic()
    zrsd.start()
    with ExitStack() as stack:
        # Connected from the start: follows the catch-up by invalidations
        # (a ClientStorage: no DB opens on an empty read-only replica).
        replica = stack.enter_context(closing(zrsd.client()))
        primary_client = stack.enter_context(closing(
            primary.client(read_only=True)))
        zrsd.wait_for_tid(primary_last, 240, replica)
        elapsed = time.monotonic() - started
        txns = len(populated.history)
        print('\nzc.zrs -> zrsd catch-up: %d transactions, %.1f MB of record'
              ' data (%.1f MB file) in %.2f s (%.0f txn/s, %.1f MB/s)' % (
                  txns, populated.data_bytes / MB, populated.fs_size / MB,
                  elapsed, txns / elapsed, populated.fs_size / MB / elapsed))

        expected = {oid: load_or_missing(primary_client, oid)
                    for oid in populated.oids}
        mismatched = [oid.hex() for oid, data in expected.items()
                      if load_or_missing(replica, oid) != data]
        assert not mismatched, '%d objects differ, e.g. %s' % (
            len(mismatched), mismatched[:5])
        assert 'missing' in expected.values(), (
            'the history should contain undone creations')

        # A primary commit reaches a connected ClientStorage (caching the
        # old root) and a ZODB connection of the replica.
        replica_db = stack.enter_context(closing(zrsd.db(read_only=True)))
        tm, root = stack.enter_context(opened(replica_db))
        assert 'e2e-marker' not in root
        old_root_serial = replica.load(z64)[1]
        new_tid = commit_change(primary.zeo_address, 'e2e-marker', 'visible')
        assert new_tid > primary_last
        zrsd.wait_for_tid(new_tid, storage=replica)
        assert replica.load(z64)[1] == new_tid != old_root_serial
        wait_for_value(tm, root, 'e2e-marker', 'visible')

        # Writes are refused through ZODB and the storage API, and the
        # server will not even register a writable client.
        tm.begin()
        root['e2e-write'] = 1
        with pytest.raises(ReadOnlyError):
            tm.commit()
        tm.abort()
        writable = stack.enter_context(closing(
            zrsd.client(read_only=False, read_only_fallback=True)))
        assert writable.isReadOnly(), 'a writable ZEO registration'
        # ZEO lets clients pack a read-only server; `pack refuse` refuses.
        for storage in (replica, writable):
            for refused in (storage.new_oid,
                            lambda: storage.tpc_begin(TransactionMetaData()),
                            lambda: storage.pack(time.time(), referencesf)):
                with pytest.raises(ReadOnlyError):
                    refused()
        with pytest.raises(ReadOnlyError):
            replica_db.pack()
        assert zrsd.running(), zrsd.log()
        assert replica.lastTransaction() == new_tid
        tm.begin()
        assert 'e2e-write' not in root

    zrsd.stop()
    # Refused writes are expected: one INFO line each, no traceback.
    assert 'Traceback' not in zrsd.log()
    assert 'client request refused, the storage is read-only' in zrsd.log()
    assert os.path.exists(zrsd.fs_path + '.index')   # a clean stop
    assert primary.stop() == 0, primary.log()
    assert assert_same_history(primary.fs_path, zrsd.fs_path) == txns + 1


def test_resume_after_sigkill_mid_catch_up(zczrs_populated, zczrs_primary,
                                           node):
    """SIGKILLed half-way through catch-up (a proxy holds the stream's
    second half), zrsd resumes after its last commit, identical."""
    primary, history = zczrs_primary, zczrs_populated.history
    primary_last = zczrs_populated.last_tid
    with closing(ChaosProxy(primary.repl_port,
                            hold_after=zczrs_populated.fs_size // 2)) as proxy:
        zrsd = node('zrsd', upstream=proxy.port).start()
        first = proxy.wait_for_link(0)
        assert first.handshake() == (b'zrs2.0', z64)
        with closing(zrsd.client()) as replica:
            wait_until(lambda: zrsd.check_alive() and
                       replica.lastTransaction() != z64,
                       timeout=120, message='first replicated transaction')
            wait_until(lambda: zrsd.check_alive() and first.held.is_set(),
                       timeout=120, message='zrsd to read half the stream')
            partial = replica.lastTransaction()
        assert partial in [t[0] for t in history] and partial < primary_last
        zrsd.kill()

        # What survived the kill is a prefix of the primary's history.
        committed = transactions(zrsd.fs_path)
        assert committed == history[:len(committed)]
        assert 0 < len(committed) < len(history), len(committed)
        resume_tid = committed[-1][0]
        assert resume_tid >= partial

        proxy.hold_after = None  # later connections go through
        started = time.monotonic()
        zrsd.start()
        assert proxy.wait_for_link(1).handshake() == (
            b'zrs2.0', resume_tid), 'not resumed after %s' % resume_tid.hex()
        zrsd.wait_for_tid(primary_last, timeout=240)
        print('\nresume: SIGKILLed with %d/%d transactions committed, '
              'restarted from %s, caught up the rest in %.2f s' % (
                  len(committed), len(history), resume_tid.hex(),
                  time.monotonic() - started))
        zrsd.stop()
    assert primary.stop() == 0, primary.log()
    assert assert_same_history(primary.fs_path, zrsd.fs_path) == len(history)
