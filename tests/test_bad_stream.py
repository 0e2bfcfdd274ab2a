"""zrsd against a primary whose stream breaks after GOOD transactions: it
logs an ERROR naming the reason, resumes after the last good transaction,
keeps serving ZEO readers, and stops with exactly the good transactions."""
import pickle
import struct
from contextlib import closing

import pytest
import transaction
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.utils import z64

from harness.history import assert_same_history, transactions
from harness.process import wait_until
from harness.stream import FakePrimary, replay

GOOD = 2  # good transactions sent before the bad part


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """(path, `Txn`s) of a FileStorage: creation, add, change, add, undo (a
    data_txn back-pointer, an undone creation)."""
    path = str(tmp_path_factory.mktemp('source') / 'source.fs')
    with closing(ZODB.DB(path)) as db:
        conn = db.open()
        conn.root()['a'] = PersistentMapping(n=1)
        txn = transaction.get()
        txn.note('add a')
        txn.setUser('alice')
        txn.setExtendedInfo('ticket', 42)
        transaction.commit()
        conn.root()['a']['n'] = 2
        transaction.commit()
        conn.root()['b'] = PersistentMapping(name='bee')
        transaction.commit()
        db.undo(db.undoLog(0, 1)[0]['id'])
        transaction.commit()
        conn.close()
    txns = transactions(path)
    assert len(txns) == 5
    return path, txns


def error_logged(log, reason, logger=''):
    """ERROR log lines (of loggers starting with `logger`) naming `reason`."""
    return [line for line in log.splitlines()
            if ' ERROR %s' % logger in line and reason in line]


def root_data(txns):
    """The root object's data as of the last of `txns`."""
    return next(r.data for t in reversed(txns) for r in t.records
                if r.oid == z64)


def run_bad_stream(node, source, tail, reason):
    """Replicate GOOD transactions then `tail(stream, txns)`; the log."""
    _, txns = source
    good = txns[:GOOD]
    with FakePrimary(replay(good, tail=lambda s: tail(s, txns))) as primary:
        proc = node('replica', upstream=primary.port).start()
        # From scratch, then resuming after the last good transaction (the
        # good ones were committed, the bad one was not).
        conns = primary.wait_connections(3)
        assert conns[0].protocol == b'zrs2.0'
        assert [c.start_tid for c in conns[:3]] == (
            [z64] + [good[-1].tid] * 2), proc.log()
        wait_until(lambda: error_logged(proc.log(), reason),
                   30, message='ERROR %r in zrsd log' % reason)
        with closing(proc.client()) as client:
            assert client.lastTransaction() == good[-1].tid
            assert client.load(z64)[0] == root_data(good)
        assert proc.running()
        proc.stop()
    assert transactions(proc.fs_path) == good
    return proc.log()


BAD = {
    'checksum': (lambda s, t: s.transaction(t[GOOD], digest=b'\0' * 16),
                 'checksum mismatch'),
    'garbage': (lambda s, t: s.payload(b'\xde\xad\xbe\xef not a pickle'),
                'undecodable message'),
    'S-before-T': (lambda s, t: s.records(t[GOOD], 1), 'unexpected'),
    'C-without-T': (lambda s, t: s.commit(), 'unexpected'),
    'T-inside-T': (lambda s, t: s.begin_txn(t[GOOD]).records(t[GOOD])
                   .transaction(t[GOOD + 1]), 'unexpected'),
    'equal-tid': (lambda s, t: s.transaction(t[GOOD], tid=t[GOOD - 1].tid),
                  'non-increasing tid'),
    'lower-tid': (lambda s, t: s.transaction(t[GOOD], tid=t[0].tid),
                  'non-increasing tid'),
    'oversized': (lambda s, t: s.raw(struct.pack('>I', 0xFFFFFFF0) + b'no'),
                  'too large'),
}


@pytest.mark.parametrize('tail, reason', BAD.values(), ids=list(BAD))
def test_bad_stream_rejected(node, source, tail, reason):
    """Each kind of broken stream is logged, rejected and retried."""
    run_bad_stream(node, source, tail, reason)


def hostile_pickle(command):
    """A protocol-1 pickle of ('T', os.system(command))."""
    def text(s):  # BINUNICODE
        return b'X' + struct.pack('<I', len(s.encode())) + s.encode()
    return b'(' + text('T') + b'cos\nsystem\n(' + text(command) + b'tRt.'


def test_hostile_pickle_refused(node, source, tmp_path):
    """A pickle running a command when unpickled (the control) is refused."""
    control, marker = tmp_path / 'control-marker', tmp_path / 'pwned-marker'
    pickle.loads(hostile_pickle('touch %s' % control))
    assert control.exists()
    log = run_bad_stream(node, source, lambda s, t: s.payload(
        hostile_pickle('touch %s' % marker)), 'refused global')
    assert not marker.exists(), 'the hostile pickle was executed'
    assert 'os.system' in ''.join(error_logged(log, 'refused global'))


@pytest.mark.parametrize('case', ['current', 'legacy', 'lost'])
def test_replicates_exactly(node, source, case):
    """The current and legacy forms replicate, and a stream `lost` after a
    T and an S (the half transaction aborted) after reconnecting."""
    path, txns = source
    script, starts = replay(txns, legacy=case == 'legacy'), [z64]
    if case == 'lost':
        bad, resume = txns[GOOD], txns[GOOD - 1].tid
        script = [replay(txns[:GOOD], tail=lambda s: s.begin_txn(bad)
                         .records(bad, 1).close())(z64), script(resume)]
        starts = [z64, resume]
    with FakePrimary(script) as primary:
        proc = node('replica', upstream=primary.port).start()
        primary.wait_connections(len(starts))
        proc.wait_for_tid(txns[-1].tid, 60)
        with closing(proc.client()) as client:
            assert client.load(z64)[0] == root_data(txns)
        assert primary.start_tids == starts, proc.log()
        proc.stop()
    assert assert_same_history(path, proc.fs_path) == len(txns)
    if case != 'lost':
        # (ZEO itself logs an ERROR when a port probe resets: not ours.)
        assert not error_logged(proc.log(), '', logger='zrsd'), proc.log()
