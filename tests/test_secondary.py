"""The replication state machine, zrsd.replica.receiver.Receiver, fed what
a zc.zrs primary sends, its sink recording every call it makes."""
import hashlib
import logging
import pickle

import pytest

from ZODB.utils import p64, z64

from zrsd.protocol import BLOB_BLOCK_SIZE, FrameDecoder, ProtocolError
from zrsd.replica.receiver import Receiver, State

from harness.stream import RecordingSink, Stream, bytewise, split_everywhere

START, TID1, TID2, TID3 = [
    p64(0x03E5000000000000 + n) for n in (0, 0x10, 0x20, 0x30)]
OID0, OID1, OID2 = p64(0), p64(1), p64(2)


@pytest.fixture
def sink(tmp_path):
    return RecordingSink(tmp_path)


def receive(sink, stream=None, **kw):
    """A receiver on `sink`, fed `stream` if given: (receiver, commits),
    `commits` the (tid, nbytes) of each commit so far."""
    commits = []
    receiver = Receiver(sink, START, **kw,
                        on_commit=lambda tid, n: commits.append((tid, n)))
    if stream is not None:
        feed(receiver, stream.payloads)
    return receiver, commits


def feed(receiver, payloads):
    for payload in payloads:
        receiver.frame_received(payload)


def tids(commits):
    return [tid for tid, _ in commits]


def assert_failed(receiver, commits, names):
    """The receiver failed having committed nothing, its sink saw `names`,
    and further input is refused without reaching the sink."""
    assert (receiver.state, receiver.last_tid) == (State.FAILED, START)
    assert commits == [] and receiver.sink.names() == names
    with pytest.raises(ProtocolError):
        receiver.frame_received(Stream(START).begin(TID1).payloads[0])
    receiver.abort()  # idempotent
    assert receiver.sink.names() == names


def test_full_transaction(sink):
    stream = Stream(START).begin(TID1, 'p', b'alice', b'add a', {'ticket': 42})
    stream.store(OID0, TID1, b'root record')
    stream.store(OID1, TID1, None, data_txn=TID1)  # undone creation
    before_commit = sum(len(p) for p in stream.payloads)
    stream.commit()
    receiver, commits = receive(sink)
    assert receiver.state is State.IDLE
    feed(receiver, stream.payloads[:1])
    assert (receiver.state, receiver.transaction_tid) == (
        State.IN_TRANSACTION, TID1)
    feed(receiver, stream.payloads[1:-1])
    assert (sink.names(), commits) == (['begin', 'store', 'store'], [])
    feed(receiver, stream.payloads[-1:])
    assert sink.calls == [
        ('begin', TID1, 'p', b'alice', b'add a', {'ticket': 42}),
        ('store', OID0, TID1, b'root record', None),
        ('store', OID1, TID1, None, TID1), ('commit', TID1)]
    # nbytes: the payloads of the transaction up to its C message.
    assert commits == [(TID1, before_commit)]
    assert (receiver.state, receiver.last_tid, receiver.transaction_tid) \
        == (State.IDLE, TID1, None)


def test_second_transaction_continues_the_running_checksum(sink):
    stream = Stream(START).begin(TID1).store(OID0, TID1, b'one').commit()
    stream.begin(TID2).store(OID0, TID2, b'two').commit()
    # The second digest covers the first transaction too.
    second_digest = pickle.loads(stream.payloads[-1])[1][0]
    assert second_digest == hashlib.md5(
        START + b''.join(stream.payloads[:-1])).digest()
    receiver, commits = receive(sink, stream)
    assert tids(commits) == [TID1, TID2]
    assert sink.names().count('commit') == 2


def test_checksum_restarted_per_transaction_is_refused(sink):
    stream = Stream(START).begin(TID1).commit()
    receiver, commits = receive(sink, stream)
    # A primary that (wrongly) reseeds the checksum for each transaction.
    with pytest.raises(ProtocolError, match='checksum mismatch'):
        feed(receiver, Stream(START).begin(TID2).commit().payloads)
    assert commits == [(TID1, len(stream.payloads[0]))]


def test_legacy_stream_commits(sink, caplog):
    stream = Stream(START).begin(TID1).store_legacy(OID0, TID1, b'inline')
    stream.store_legacy(OID1, TID1, None, data_txn=TID1).commit_legacy()
    stream.begin(TID2).store_legacy(OID0, TID2, b'again').commit_legacy()
    with caplog.at_level(logging.WARNING, logger='zrsd.replica.receiver'):
        receiver, commits = receive(sink, stream)
    assert sink.calls == [
        ('begin', TID1, ' ', b'', b'', {}),
        ('store', OID0, TID1, b'inline', None),
        ('store', OID1, TID1, None, TID1), ('commit', TID1),
        ('begin', TID2, ' ', b'', b'', {}),
        ('store', OID0, TID2, b'again', None), ('commit', TID2)]
    assert tids(commits) == [TID1, TID2]
    warnings = [r for r in caplog.records if 'checksum' in r.getMessage()]
    assert len(warnings) == 1  # warned once, not per commit


def test_mixed_legacy_and_checksummed_commits(sink):
    stream = Stream(START).begin(TID1).store(OID0, TID1, b'x').commit_legacy()
    stream.begin(TID2).store(OID0, TID2, b'y').commit()
    assert tids(receive(sink, stream)[1]) == [TID1, TID2]


def test_bad_checksum_accepted_when_checks_are_off(sink):
    receiver, commits = receive(sink, Stream(START).one(
        TID1, data=b'x', digest=b'\1' * 16), check_checksums=False)
    assert (sink.names(), tids(commits)) == (['begin', 'store', 'commit'],
                                             [TID1])


@pytest.mark.parametrize('build, match, calls', [
    (lambda s: s.store(OID0, TID1, b'x'), 'unexpected S', []),
    (lambda s: s.commit(), 'unexpected C', []),
    (lambda s: s.store_blob(OID0, TID1, b'rec', [b'blob']), 'unexpected B',
     []),
    (lambda s: s.begin(TID1).store(OID0, TID1, b'x').begin(TID2),
     'unexpected T', ['begin', 'store', 'abort']),
    (lambda s: s.begin(TID1).message('B', (OID0, TID1, '', b'data', None, 1)),
     'bad B message', ['begin', 'abort']),
    (lambda s: s.begin(TID1).payload(b'\xff\xfe not a pickle'),
     'undecodable message', ['begin', 'abort']),
    (lambda s: s.begin(START), 'non-increasing tid', []),
    (lambda s: s.begin(p64(1)), 'non-increasing tid', []),
    (lambda s: s.begin(TID1).store(OID0, TID2, b'x'), 'record tid',
     ['begin', 'abort']),
    (lambda s: s.begin(TID1).store_blob(OID0, TID2, b'rec', [b'blob']),
     'record tid', ['begin', 'abort']),
    (lambda s: s.begin(TID1).store_legacy(OID0, TID2, b'x'), 'record tid',
     ['begin', 'abort']),
    (lambda s: s.begin(TID1).store_blob(
        OID2, TID1, b'rec', [b'x' * (BLOB_BLOCK_SIZE + 1)]),
     'blob block', ['begin', 'open_blob', 'abort']),
    (lambda s: Stream(z64).begin(TID1).commit(),   # seeded with our start
     'checksum mismatch', ['begin', 'abort']),
    (lambda s: s.one(TID1, data=b'x', digest=b'\1' * 16),
     'checksum mismatch at commit of .*' + TID1.hex(),
     ['begin', 'store', 'abort']),
], ids=['store-before-begin', 'commit-before-begin', 'blob-before-begin',
        'begin-inside-transaction', 'blob-message-with-inline-data',
        'garbage-inside-transaction', 'tid-equal-to-start',
        'tid-below-start', 'record-tid-differs', 'blob-record-tid-differs',
        'inline-record-tid-differs', 'blob-block-too-large',
        'checksum-seeded-with-start-tid', 'bad-checksum'])
def test_bad_stream_fails(sink, build, match, calls):
    """The receiver fails, aborting an open transaction (once)."""
    receiver, commits = receive(sink)
    with pytest.raises(ProtocolError, match=match):
        feed(receiver, build(Stream(START)).payloads)
    assert_failed(receiver, commits, calls)


def test_tid_not_above_last_committed(sink):
    for bad in (TID2, TID1):
        receiver, commits = receive(sink)
        with pytest.raises(ProtocolError, match='non-increasing tid'):
            feed(receiver,
                 Stream(START).begin(TID2).commit().begin(bad).payloads)
        assert tids(commits) == [TID2]


def test_blob_record(sink):
    block1 = bytes(range(256)) * 256  # exactly 65536 bytes
    assert len(block1) == BLOB_BLOCK_SIZE
    block2 = b'tail of the blob'
    stream = Stream(START).begin(TID1)
    stream.store_blob(OID2, TID1, b'blob record', [block1, block2]).commit()
    receiver, commits = receive(sink)
    feed(receiver, stream.payloads[:3])  # T, B, record data
    assert receiver.state is State.BLOB_BLOCKS
    feed(receiver, stream.payloads[3:4])
    assert 'store_blob' not in sink.names()
    feed(receiver, stream.payloads[4:5])
    assert receiver.state is State.IN_TRANSACTION
    feed(receiver, stream.payloads[5:])
    assert sink.names() == ['begin', 'open_blob', 'store_blob', 'commit']
    assert sink.calls[2] == ('store_blob', OID2, TID1, b'blob record', None,
                             block1 + block2, True)
    assert [f.closed for f in sink.blobs] == [True]
    assert tids(commits) == [TID1]


def test_empty_blob(sink):
    stream = Stream(START).begin(TID1)
    stream.store_blob(OID2, TID1, b'blob record', [])
    stream.store(OID0, TID1, b'root').commit()
    receiver, commits = receive(sink, stream)
    assert sink.calls[2] == ('store_blob', OID2, TID1, b'blob record', None,
                             b'', True)
    assert sink.names() == [
        'begin', 'open_blob', 'store_blob', 'store', 'commit']
    assert tids(commits) == [TID1]


def half_a_blob():
    """T, then a blob record that has received one of its two blocks."""
    stream = Stream(START).begin(TID1).message('B', (OID2, TID1, '', None, 2))
    return stream.payload(b'rec').payload(b'block1')


def test_commit_in_the_middle_of_blob_blocks_is_not_a_commit(sink):
    """While blocks are expected every frame is blob content, a C message
    too: the transaction is not committed early."""
    receiver, commits = receive(sink, half_a_blob().commit())
    assert (commits, receiver.state) == ([], State.IN_TRANSACTION)
    assert sink.names() == ['begin', 'open_blob', 'store_blob']


@pytest.mark.parametrize('method, calls', [
    ('begin', ['begin']),
    ('store', ['begin', 'store']),
    ('store_blob', ['begin', 'store', 'open_blob', 'store_blob']),
    ('commit', ['begin', 'store', 'open_blob', 'store_blob', 'commit']),
])
def test_sink_failure_aborts_and_propagates(tmp_path, method, calls):
    sink = RecordingSink(tmp_path, fail_on=method)
    stream = Stream(START).begin(TID1).store(OID0, TID1, b'x')
    stream.store_blob(OID2, TID1, b'rec', [b'data']).commit()
    receiver, commits = receive(sink)
    with pytest.raises(OSError, match='disk full'):
        feed(receiver, stream.payloads)
    assert_failed(receiver, commits, calls + ['abort'])


def test_abort_mid_transaction_closes_blob_file(sink):
    receiver, commits = receive(sink, half_a_blob())
    receiver.abort()
    assert sink.names() == ['begin', 'open_blob', 'abort']
    receiver.abort()
    assert sink.names().count('abort') == 1


def test_abort_between_transactions_does_not_touch_sink(sink):
    receive(sink)[0].abort()
    assert sink.calls == []


# -- the whole stream through the frame decoder, split everywhere -----------

def run_stream(tmp_path, pieces):
    sink = RecordingSink(tmp_path)
    receiver, commits = receive(sink)
    frames = FrameDecoder(receiver.frame_received)
    for piece in pieces:
        frames.feed(piece)
    assert frames.buffered == 0
    return sink, commits


@pytest.mark.parametrize('splits', [
    split_everywhere, lambda data: [bytewise(data)],
], ids=['at-every-byte-boundary', 'byte-by-byte'])
def test_stream_split(tmp_path, splits):
    stream = Stream(START).begin(TID1, user=b'u', description=b'd')
    stream.store(OID0, TID1, b'r0').store(OID1, TID1, None).commit()
    stream.begin(TID2).store_blob(OID2, TID2, b'b', [b'12', b'3']).commit()
    stream.begin(TID3).store_legacy(OID0, TID3, b'r1').commit_legacy()
    data = stream.wire()
    sink, commits = run_stream(tmp_path, [data])
    assert tids(commits) == [TID1, TID2, TID3]
    assert ('store_blob', OID2, TID2, b'b', None, b'123', True) in sink.calls
    for pieces in splits(data):
        got_sink, got = run_stream(tmp_path, pieces)
        assert (got, got_sink.calls) == (commits, sink.calls), pieces
