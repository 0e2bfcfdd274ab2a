"""zrsd against a broken or hostile primary (tests/stream.py).

In every bad-stream case the fake primary behaves like a real primary whose
stream is broken at one point: on each connection it replays the good
transactions after the secondary's start tid, then sends the bad part.  zrsd
must log an ERROR naming the reason, abort the open transaction, drop the
connection and reconnect from the last *good* transaction, keep serving ZEO
readers meanwhile, and stop cleanly on SIGTERM with a replica file that ends
exactly at the last good transaction.
"""
import pickle
import struct

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from persistent.mapping import PersistentMapping
from ZEO.ClientStorage import ClientStorage
from ZODB.utils import z64

from harness.history import (assert_same_history, transactions, transactions as
                             read_transactions)
from harness.process import wait_until
from harness.stream import FakePrimary, Stream, replay
from harness.zrsd_nodes import ZrsdNode

GOOD = 2  # good transactions sent before the bad part


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A small real FileStorage: creation, add, change, add, undo.

    The undo gives records with a data_txn back-pointer and an undone
    creation (data None).  Returns (path, [Txn, ...]).
    """
    path = str(tmp_path_factory.mktemp('source') / 'source.fs')
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path))
    try:
        conn = db.open()
        root = conn.root()
        root['a'] = PersistentMapping(n=1)
        txn = transaction.get()
        txn.note('add a')
        txn.setUser('alice')
        txn.setExtendedInfo('ticket', 42)
        transaction.commit()
        root['a']['n'] = 2
        transaction.commit()
        root['b'] = PersistentMapping(name='bee')
        transaction.commit()
        db.undo(db.undoLog(0, 1)[0]['id'])
        transaction.commit()
        conn.close()
    finally:
        db.close()
    txns = read_transactions(path)
    assert len(txns) == 5
    return path, txns


def error_logged(log, reason, logger=''):
    """ERROR log lines (of loggers starting with `logger`) naming `reason`."""
    return [line for line in log.splitlines()
            if ' ERROR %s' % logger in line and reason in line]


def zeo_client(port):
    """A read-only ZEO client of the replica (storage '1')."""
    return ClientStorage(('127.0.0.1', port), read_only=True, wait_timeout=30)


def latest_data(txns, oid):
    for txn in reversed(txns):
        for r in txn.records:
            if r.oid == oid:
                return r.data
    return None


def run_bad_stream(tmp_path, source, tail, reason):
    """Run zrsd against a primary that breaks after GOOD transactions."""
    source_path, txns = source
    good = txns[:GOOD]
    with FakePrimary(replay(good, tail=tail)) as primary:
        proc = ZrsdNode(tmp_path, 'replica', upstream=primary.port).start()
        zeo_port, fs_path = proc.zeo_port, proc.fs_path
        try:
            # Three handshakes: the first from scratch, then reconnects that
            # resume after the last good transaction (so the good ones were
            # committed and the bad one was not).
            conns = primary.wait_connections(3)
            assert conns[0].protocol == b'zrs2.0'
            assert conns[0].start_tid == z64
            assert [c.start_tid for c in conns[1:3]] == [good[-1].tid] * 2, (
                proc.log())
            wait_until(lambda: error_logged(proc.log(), reason),
                       30, message='ERROR %r in zrsd log' % reason)
            # The daemon keeps serving readers while it rejects the stream.
            client = zeo_client(zeo_port)
            try:
                assert client.lastTransaction() == good[-1].tid
                assert client.load(z64)[0] == latest_data(good, z64)
            finally:
                client.close()
            assert proc.running()
        finally:
            status = proc.stop(expect=None)
            proc.close()
    assert status == 0, proc.log()
    replica = transactions(fs_path)
    assert replica == transactions(source_path)[:GOOD]
    return proc.log()


def test_bad_checksum(tmp_path, source):
    _, txns = source

    def tail(stream):
        stream.transaction(txns[GOOD], digest=b'\x00' * 16)
    run_bad_stream(tmp_path, source, tail, 'checksum mismatch')


def test_garbage_instead_of_pickle(tmp_path, source):
    def tail(stream):
        stream.payload(b'\xde\xad\xbe\xef this is not a pickle')
    run_bad_stream(tmp_path, source, tail, 'undecodable message')


def _store_before_begin(stream, txns):
    r = txns[GOOD].records[0]
    stream.store(r.oid, txns[GOOD].tid, r.data, r.data_txn)


def _commit_without_begin(stream, txns):
    stream.commit()


def _begin_inside_transaction(stream, txns):
    bad = txns[GOOD]
    stream.begin(bad.tid, bad.status, bad.user, bad.description,
                 bad.extension)
    for r in bad.records:
        stream.store(r.oid, bad.tid, r.data, r.data_txn)
    stream.transaction(txns[GOOD + 1])


@pytest.mark.parametrize('tail', [
    _store_before_begin, _commit_without_begin, _begin_inside_transaction],
    ids=['S-before-T', 'C-without-T', 'T-inside-T'])
def test_out_of_order_message(tmp_path, source, tail):
    _, txns = source
    run_bad_stream(tmp_path, source, lambda s: tail(s, txns), 'unexpected')


@pytest.mark.parametrize('which', ['equal', 'lower'])
def test_non_increasing_tid(tmp_path, source, which):
    _, txns = source
    bad_tid = txns[GOOD - 1].tid if which == 'equal' else txns[0].tid

    def tail(stream):
        stream.transaction(txns[GOOD], tid=bad_tid)
    run_bad_stream(tmp_path, source, tail, 'non-increasing tid')


def hostile_pickle(command):
    """A protocol-1 pickle of ('T', os.system(command)): unpickling it with
    an unrestricted unpickler runs the command."""
    def unicode(text):
        data = text.encode()
        return b'X' + struct.pack('<I', len(data)) + data
    return (b'(' + unicode('T') + b'cos\nsystem\n(' + unicode(command)
            + b'tRt.')


def test_hostile_pickle_refused(tmp_path, source):
    # Control: the payload really is dangerous with a plain unpickler.
    control = tmp_path / 'control-marker'
    pickle.loads(hostile_pickle('touch %s' % control))
    assert control.exists()

    marker = tmp_path / 'pwned-marker'

    def tail(stream):
        stream.payload(hostile_pickle('touch %s' % marker))
    log = run_bad_stream(tmp_path, source, tail, 'refused global')
    assert not marker.exists(), 'the hostile pickle was executed'
    assert 'os.system' in ''.join(error_logged(log, 'refused global'))


def test_oversized_length_prefix(tmp_path, source):
    def tail(stream):
        stream.raw(struct.pack('>I', 0xFFFFFFF0) + b'not that much data')
    run_bad_stream(tmp_path, source, tail, 'too large')


def test_connection_lost_mid_transaction(tmp_path, source):
    """The primary vanishes after T and S: the half transaction is aborted
    and the rest is replicated after reconnecting."""
    source_path, txns = source
    first = Stream(z64)
    for txn in txns[:GOOD]:
        first.transaction(txn)
    bad = txns[GOOD]
    first.begin(bad.tid, bad.status, bad.user, bad.description, bad.extension)
    r = bad.records[0]
    first.store(r.oid, bad.tid, r.data, r.data_txn)
    first.close()
    second = Stream(txns[GOOD - 1].tid)
    for txn in txns[GOOD:]:
        second.transaction(txn)
    replicate_and_compare(
        tmp_path, source_path, txns, [first.script(), second.script()],
        expected_starts=[z64, txns[GOOD - 1].tid], clean=False)


def test_legacy_forms_accepted(tmp_path, source):
    """Inline-data 'S' and checksum-less 'C' (the seed document's forms)."""
    source_path, txns = source
    replicate_and_compare(tmp_path, source_path, txns,
                          replay(txns, legacy=True), expected_starts=[z64])


def test_current_forms_control(tmp_path, source):
    """Control for the fake primary itself: the normal stream replicates."""
    source_path, txns = source
    replicate_and_compare(tmp_path, source_path, txns, replay(txns),
                          expected_starts=[z64])


def replicate_and_compare(tmp_path, source_path, txns, script,
                          expected_starts, clean=True):
    """Replicate `script`; the replica must equal the source exactly."""
    with FakePrimary(script) as primary:
        proc = ZrsdNode(tmp_path, 'replica', upstream=primary.port).start()
        zeo_port, fs_path = proc.zeo_port, proc.fs_path
        try:
            primary.wait_connections(len(expected_starts))
            client = zeo_client(zeo_port)
            try:
                # ZEO invalidations move lastTransaction as commits land.
                wait_until(
                    lambda: client.lastTransaction() == txns[-1].tid,
                    60, message='replica at the last source transaction')
                assert client.load(z64)[0] == latest_data(txns, z64)
            finally:
                client.close()
            assert primary.start_tids == expected_starts, proc.log()
        finally:
            status = proc.stop(expect=None)
            proc.close()
    assert status == 0, proc.log()
    assert assert_same_history(source_path, fs_path) == len(txns)
    if clean:
        # (ZEO itself logs an ERROR when a port probe resets: not ours.)
        assert not error_logged(proc.log(), '', logger='zrsd'), proc.log()
    return proc.log()
