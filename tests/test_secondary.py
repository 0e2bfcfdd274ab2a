"""Unit tests for the replication state machine,
zrsd.replica.receiver.Receiver.

The receiver is fed frame payloads as a zc.zrs primary sends them and drives
`RecordingSink`, which records every call.
"""
import hashlib
import logging
import pickle
import tempfile

import pytest

from ZODB.utils import p64, z64

from zrsd.protocol import BLOB_BLOCK_SIZE, FrameDecoder, ProtocolError
from zrsd.replica.receiver import Receiver, State

from harness.stream import Stream

START = p64(0x03E5000000000000)
TID1 = p64(0x03E5000000000010)
TID2 = p64(0x03E5000000000020)
TID3 = p64(0x03E5000000000030)
OID0, OID1, OID2 = p64(0), p64(1), p64(2)


class RecordingSink:
    """A sink recording calls; `open_blob` returns a real temporary file."""

    def __init__(self, tmp_path, fail_on=None, exception=None):
        self.tmp_path = tmp_path
        self.calls = []
        self.blobs = []  # (file object, content read back at store time)
        self.fail_on = fail_on
        self.exception = exception

    def _record(self, name, *args):
        self.calls.append((name,) + args)
        if name == self.fail_on:
            raise self.exception

    def begin(self, tid, status, user, description, extension):
        self._record('begin', tid, status, user, description, extension)

    def store(self, oid, tid, data, data_txn):
        self._record('store', oid, tid, data, data_txn)

    def open_blob(self):
        self._record('open_blob')
        f = tempfile.NamedTemporaryFile(
            dir=self.tmp_path, suffix='.blob', delete=False)
        return f

    def store_blob(self, oid, tid, data, data_txn, blob_file):
        with open(blob_file.name, 'rb') as f:
            content = f.read()
        self.blobs.append((blob_file, content))
        self._record('store_blob', oid, tid, data, data_txn, content,
                     blob_file.closed)

    def commit(self):
        self._record('commit')
        return self.calls[-1]

    def abort(self):
        self._record('abort')

    def names(self):
        return [call[0] for call in self.calls]


def feed(receiver, payloads):
    for payload in payloads:
        receiver.frame_received(payload)


@pytest.fixture
def sink(tmp_path):
    return RecordingSink(tmp_path)


def make_receiver(sink, start_tid=START, **kw):
    commits = []
    receiver = Receiver(sink, start_tid,
                        on_commit=lambda tid, n: commits.append((tid, n)),
                        **kw)
    return receiver, commits


def test_full_transaction(sink):
    stream = Stream(START)
    stream.begin(TID1, 'p', b'alice', b'add a', {'ticket': 42})
    stream.store(OID0, TID1, b'root record')
    stream.store(OID1, TID1, None, data_txn=TID1)  # undone creation
    before_commit = sum(len(p) for p in stream.payloads)
    stream.commit()
    receiver, commits = make_receiver(sink)
    assert receiver.state is State.IDLE
    feed(receiver, stream.payloads[:1])
    assert receiver.state is State.IN_TRANSACTION
    assert receiver.transaction_tid == TID1
    feed(receiver, stream.payloads[1:-1])
    assert sink.names() == ['begin', 'store', 'store']
    assert commits == []
    feed(receiver, stream.payloads[-1:])
    assert sink.calls == [
        ('begin', TID1, 'p', b'alice', b'add a', {'ticket': 42}),
        ('store', OID0, TID1, b'root record', None),
        ('store', OID1, TID1, None, TID1),
        ('commit',),
    ]
    # nbytes: the payloads of the transaction up to its C message.
    assert commits == [(TID1, before_commit)]
    assert receiver.state is State.IDLE
    assert receiver.last_tid == TID1
    assert receiver.transaction_tid is None


def test_second_transaction_continues_the_running_checksum(sink):
    stream = Stream(START)
    stream.begin(TID1).store(OID0, TID1, b'one').commit()
    stream.begin(TID2).store(OID0, TID2, b'two').commit()
    # The second digest covers the first transaction too.
    second_digest = pickle.loads(stream.payloads[-1])[1][0]
    fresh = hashlib.md5(START)
    for p in stream.payloads[:-1]:
        fresh.update(p)
    assert second_digest == fresh.digest()
    receiver, commits = make_receiver(sink)
    feed(receiver, stream.payloads)
    assert [tid for tid, _ in commits] == [TID1, TID2]
    assert sink.names().count('commit') == 2


def test_checksum_restarted_per_transaction_is_refused(sink):
    stream = Stream(START)
    stream.begin(TID1).commit()
    # A primary that (wrongly) reseeds the checksum for each transaction.
    second = Stream(START)
    second.begin(TID2).commit()
    receiver, commits = make_receiver(sink)
    feed(receiver, stream.payloads)
    with pytest.raises(ProtocolError, match='checksum mismatch'):
        feed(receiver, second.payloads)
    assert commits == [(TID1, len(stream.payloads[0]))]


def test_legacy_stream_commits(sink, caplog):
    stream = Stream(START)
    stream.begin(TID1).store_legacy(OID0, TID1, b'inline record')
    stream.store_legacy(OID1, TID1, None, data_txn=TID1).commit_legacy()
    stream.begin(TID2).store_legacy(OID0, TID2, b'again').commit_legacy()
    receiver, commits = make_receiver(sink)
    with caplog.at_level(logging.WARNING, logger='zrsd.replica.receiver'):
        feed(receiver, stream.payloads)
    assert sink.calls == [
        ('begin', TID1, ' ', b'', b'', {}),
        ('store', OID0, TID1, b'inline record', None),
        ('store', OID1, TID1, None, TID1),
        ('commit',),
        ('begin', TID2, ' ', b'', b'', {}),
        ('store', OID0, TID2, b'again', None),
        ('commit',),
    ]
    assert [tid for tid, _ in commits] == [TID1, TID2]
    warnings = [r for r in caplog.records if 'checksum' in r.getMessage()]
    assert len(warnings) == 1  # warned once, not per commit


def test_mixed_legacy_and_checksummed_commits(sink):
    stream = Stream(START)
    stream.begin(TID1).store(OID0, TID1, b'x').commit_legacy()
    stream.begin(TID2).store(OID0, TID2, b'y').commit()
    receiver, commits = make_receiver(sink)
    feed(receiver, stream.payloads)
    assert [tid for tid, _ in commits] == [TID1, TID2]


def test_bad_checksum_aborts_and_fails(sink):
    stream = Stream(START)
    stream.begin(TID1).store(OID0, TID1, b'x').commit(digest=b'\1' * 16)
    receiver, commits = make_receiver(sink)
    with pytest.raises(ProtocolError, match='checksum mismatch') as info:
        feed(receiver, stream.payloads)
    assert TID1.hex() in str(info.value)
    assert sink.names() == ['begin', 'store', 'abort']
    assert commits == []
    assert receiver.state is State.FAILED
    assert receiver.last_tid == START
    # Further input is refused, and does not reach the sink.
    good = Stream(START)
    good.begin(TID1).commit()
    with pytest.raises(ProtocolError):
        receiver.frame_received(good.payloads[0])
    assert sink.names() == ['begin', 'store', 'abort']
    receiver.abort()  # idempotent
    assert sink.names().count('abort') == 1


def test_bad_checksum_accepted_when_checks_are_off(sink):
    stream = Stream(START)
    stream.begin(TID1).store(OID0, TID1, b'x').commit(digest=b'\1' * 16)
    receiver, commits = make_receiver(sink, check_checksums=False)
    feed(receiver, stream.payloads)
    assert sink.names() == ['begin', 'store', 'commit']
    assert [tid for tid, _ in commits] == [TID1]


def test_checksum_is_seeded_with_start_tid(sink):
    stream = Stream(z64)  # primary thinks we started from zero
    stream.begin(TID1).commit()
    receiver, commits = make_receiver(sink, start_tid=START)
    with pytest.raises(ProtocolError, match='checksum mismatch'):
        feed(receiver, stream.payloads)


def _failing(sink, payloads, match, expect_abort=True):
    receiver, commits = make_receiver(sink)
    with pytest.raises(ProtocolError, match=match):
        feed(receiver, payloads)
    assert receiver.state is State.FAILED
    assert commits == []
    assert 'commit' not in sink.names()
    if expect_abort:
        assert sink.names()[-1] == 'abort'
        assert sink.names().count('abort') == 1
    else:
        assert 'abort' not in sink.names()
    return receiver


def test_store_before_begin(sink):
    stream = Stream(START)
    stream.store(OID0, TID1, b'x')
    _failing(sink, stream.payloads, 'unexpected S', expect_abort=False)
    assert sink.calls == []


def test_commit_before_begin(sink):
    stream = Stream(START)
    stream.commit()
    _failing(sink, stream.payloads, 'unexpected C', expect_abort=False)


def test_blob_before_begin(sink):
    stream = Stream(START)
    stream.store_blob(OID0, TID1, b'rec', [b'blob'])
    _failing(sink, stream.payloads, 'unexpected B', expect_abort=False)


def test_begin_inside_transaction(sink):
    stream = Stream(START)
    stream.begin(TID1).store(OID0, TID1, b'x').begin(TID2)
    _failing(sink, stream.payloads, 'unexpected T')
    assert sink.names() == ['begin', 'store', 'abort']


def test_blob_message_with_inline_data_refused(sink):
    stream = Stream(START)
    stream.begin(TID1).message('B', (OID0, TID1, '', b'data', None, 1))
    _failing(sink, stream.payloads, 'bad B message')


def test_garbage_message_inside_transaction_aborts(sink):
    stream = Stream(START)
    stream.begin(TID1).payload(b'\xff\xfe not a pickle')
    _failing(sink, stream.payloads, 'undecodable message')


def test_tid_equal_to_start_tid(sink):
    stream = Stream(START)
    stream.begin(START)
    _failing(sink, stream.payloads, 'non-increasing tid', expect_abort=False)
    assert sink.calls == []


def test_tid_below_start_tid(sink):
    stream = Stream(START)
    stream.begin(p64(1))
    _failing(sink, stream.payloads, 'non-increasing tid', expect_abort=False)


def test_tid_not_above_last_committed(sink):
    for bad in (TID2, TID1):
        stream = Stream(START)
        stream.begin(TID2).commit().begin(bad)
        receiver, commits = make_receiver(sink)
        with pytest.raises(ProtocolError, match='non-increasing tid'):
            feed(receiver, stream.payloads)
        assert [tid for tid, _ in commits] == [TID2]


def test_record_tid_differs_from_transaction(sink):
    stream = Stream(START)
    stream.begin(TID1).store(OID0, TID2, b'x')
    _failing(sink, stream.payloads, 'record tid')
    assert sink.names() == ['begin', 'abort']


def test_blob_record_tid_differs_from_transaction(sink):
    stream = Stream(START)
    stream.begin(TID1).store_blob(OID0, TID2, b'rec', [b'blob'])
    _failing(sink, stream.payloads, 'record tid')


def test_inline_record_tid_differs_from_transaction(sink):
    stream = Stream(START)
    stream.begin(TID1).store_legacy(OID0, TID2, b'x')
    _failing(sink, stream.payloads, 'record tid')


def test_blob_record(sink):
    block1 = bytes(range(256)) * 256  # exactly 65536 bytes
    assert len(block1) == BLOB_BLOCK_SIZE
    block2 = b'tail of the blob'
    stream = Stream(START)
    stream.begin(TID1).store_blob(OID2, TID1, b'blob record',
                                  [block1, block2]).commit()
    receiver, commits = make_receiver(sink)
    feed(receiver, stream.payloads[:3])  # T, B, record data
    assert receiver.state is State.BLOB_BLOCKS
    feed(receiver, stream.payloads[3:4])
    assert 'store_blob' not in sink.names()
    feed(receiver, stream.payloads[4:5])
    assert receiver.state is State.IN_TRANSACTION
    feed(receiver, stream.payloads[5:])
    assert sink.names() == ['begin', 'open_blob', 'store_blob', 'commit']
    store_blob = sink.calls[2]
    assert store_blob == ('store_blob', OID2, TID1, b'blob record', None,
                          block1 + block2, True)
    (blob_file, _), = sink.blobs
    assert blob_file.closed
    assert [tid for tid, _ in commits] == [TID1]


def test_empty_blob(sink):
    stream = Stream(START)
    stream.begin(TID1).store_blob(OID2, TID1, b'blob record', [])
    stream.store(OID0, TID1, b'root').commit()
    receiver, commits = make_receiver(sink)
    feed(receiver, stream.payloads)
    assert sink.calls[2] == ('store_blob', OID2, TID1, b'blob record', None,
                             b'', True)
    assert sink.names() == [
        'begin', 'open_blob', 'store_blob', 'store', 'commit']
    assert [tid for tid, _ in commits] == [TID1]


def test_blob_block_too_large(sink):
    stream = Stream(START)
    stream.begin(TID1).store_blob(OID2, TID1, b'rec',
                                  [b'x' * (BLOB_BLOCK_SIZE + 1)])
    _failing(sink, stream.payloads, 'blob block')
    assert 'store_blob' not in sink.names()


def test_commit_in_the_middle_of_blob_blocks_is_not_a_commit(sink):
    # While blocks are expected every frame is blob content, even one that
    # happens to be a C message: the transaction is not committed early.
    stream = Stream(START)
    stream.begin(TID1).message('B', (OID2, TID1, '', None, 2))
    stream.payload(b'rec').payload(b'block1')
    stream.commit()  # taken as the second block
    receiver, commits = make_receiver(sink)
    feed(receiver, stream.payloads)
    assert commits == []
    assert receiver.state is State.IN_TRANSACTION
    assert sink.names() == ['begin', 'open_blob', 'store_blob']


@pytest.mark.parametrize('method', ['begin', 'store', 'commit'])
def test_sink_failure_aborts_and_propagates(tmp_path, method):
    sink = RecordingSink(tmp_path, fail_on=method,
                         exception=OSError('disk full'))
    stream = Stream(START)
    stream.begin(TID1).store(OID0, TID1, b'x').commit()
    receiver, commits = make_receiver(sink)
    with pytest.raises(OSError, match='disk full'):
        feed(receiver, stream.payloads)
    assert sink.names()[-1] == 'abort'
    assert sink.names().count('abort') == 1
    assert commits == []
    assert receiver.state is State.FAILED
    assert receiver.last_tid == START
    with pytest.raises(ProtocolError):
        receiver.frame_received(stream.payloads[0])


def test_store_blob_failure_aborts(tmp_path):
    sink = RecordingSink(tmp_path, fail_on='store_blob',
                         exception=OSError('no space'))
    stream = Stream(START)
    stream.begin(TID1).store_blob(OID2, TID1, b'rec', [b'data'])
    receiver, commits = make_receiver(sink)
    with pytest.raises(OSError):
        feed(receiver, stream.payloads)
    assert sink.names() == ['begin', 'open_blob', 'store_blob', 'abort']


def test_abort_mid_transaction_closes_blob_file(sink):
    stream = Stream(START)
    stream.begin(TID1).message('B', (OID2, TID1, '', None, 2))
    stream.payload(b'rec').payload(b'block1')
    receiver, commits = make_receiver(sink)
    feed(receiver, stream.payloads)
    receiver.abort()
    assert sink.names() == ['begin', 'open_blob', 'abort']
    receiver.abort()
    assert sink.names().count('abort') == 1


def test_abort_between_transactions_does_not_touch_sink(sink):
    receiver, commits = make_receiver(sink)
    receiver.abort()
    assert sink.calls == []


# -- the whole stream through the frame decoder, split everywhere -----------

def small_stream():
    stream = Stream(START)
    stream.begin(TID1, user=b'u', description=b'd').store(OID0, TID1, b'r0')
    stream.store(OID1, TID1, None).commit()
    stream.begin(TID2).store_blob(OID2, TID2, b'b', [b'12', b'3']).commit()
    stream.begin(TID3).store_legacy(OID0, TID3, b'r1').commit_legacy()
    return stream


def run_stream(tmp_path, pieces):
    sink = RecordingSink(tmp_path)
    receiver, commits = make_receiver(sink)
    frames = FrameDecoder(receiver.frame_received)
    for piece in pieces:
        frames.feed(piece)
    assert frames.buffered == 0
    return sink, commits


def test_stream_split_at_every_byte_boundary(tmp_path):
    data = small_stream().wire()
    sink, commits = run_stream(tmp_path, [data])
    expected_calls = sink.calls
    assert [tid for tid, _ in commits] == [TID1, TID2, TID3]
    assert ('store_blob', OID2, TID2, b'b', None, b'123', True) in sink.calls
    for cut in range(1, len(data)):
        sink, got = run_stream(tmp_path, [data[:cut], data[cut:]])
        assert got == commits, cut
        assert sink.calls == expected_calls, cut


def test_stream_fed_byte_by_byte(tmp_path):
    data = small_stream().wire()
    _, commits = run_stream(tmp_path, [data])
    sink, got = run_stream(tmp_path, [data[i:i + 1] for i in range(len(data))])
    assert got == commits
    assert sink.names().count('commit') == 3
