"""The primary's streamer on a real FileStorage, in-process.  Extensions go
out as the pickles the file holds: one naming a class that does not import
(a migrated Data.fs) neither stops the stream nor imports anything."""
import pickle
import re
import sys
import queue
import threading

import pytest
import ZODB.FileStorage
from ZODB.utils import z64

from harness.history import commit_object
from harness.stream import message
from zrsd import protocol
from zrsd.primary.history import SLICE, TidIndex
from zrsd.primary.storage import CommitNotifier
from zrsd.primary.streamer import Source, Streamer

MODULE = 'zrsd_test_module_that_does_not_exist'
# {'k': MODULE.Thing()}, as ZODB pickles an extension (protocol 3).
EXTENSION = (b'\x80\x03}q\x00X\x01\x00\x00\x00kq\x01c' + MODULE.encode()
             + b'\nThing\nq\x02)\x81q\x03s.')


def stream_all(fs):
    """Every payload a streamer sent from the start, and its end's error."""
    payloads, ended = [], queue.Queue()
    streamer = Streamer(Source(fs, CommitNotifier(), TidIndex()), z64,
                        # chunks: [length, payload, length, payload...]
                        lambda chunks: payloads.extend(chunks[1::2]),
                        ended.put, name='test')
    streamer.finish()       # end once everything committed is sent
    streamer.start()
    return payloads, ended.get(timeout=60)


def test_an_extension_naming_an_unimportable_class_is_forwarded(tmp_path):
    fs = ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs'))
    try:
        first = commit_object(fs, {'plain': 1})
        odd = commit_object(fs, EXTENSION)
        after = commit_object(fs, {'plain': 2})
        payloads, error = stream_all(fs)
    finally:
        fs.close()
    assert error is None, error
    assert MODULE not in sys.modules
    kind = message('T', ())[:7]         # the pickle up to its 'T'
    begins = [p for p in payloads if p[:7] == kind]
    assert len(begins) == 3
    # The plain ones unpickle to the primary's extension as it is.
    assert MODULE.encode() not in begins[0] + begins[2]
    assert pickle.loads(begins[0])[1][0::4] == (first, {'plain': 1})
    assert pickle.loads(begins[2])[1][0::4] == (after, {'plain': 2})
    assert EXTENSION[2:-1] in begins[1]
    # (Its tid, pickled as the latin-1 text _codecs.encode takes.)
    assert odd.decode('latin-1').encode('utf-8') in begins[1]
    # A zrsd replica refuses it, unless `allow-global` names the class.
    with pytest.raises(protocol.ProtocolError,
                       match=re.escape('refused global %s.Thing' % MODULE)):
        protocol.MessageDecoder().decode(begins[1])


def test_a_big_record_goes_out_in_slices_with_few_batches_in_flight(tmp_path):
    """A big record goes a slice at a time, at most `in_flight` batches
    waiting: a slow secondary costs a few slices, not the record."""
    fs = ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs'))
    commit_object(fs, data=b'x' * (8 * SLICE + 5))
    sent, outstanding, ended = [], [], threading.Event()
    deliveries = queue.Queue()

    def send(chunks):
        sent.append(chunks)
        outstanding.append(len(sent) - written[0])
        deliveries.put(chunks)

    def deliver():      # the "reactor": one batch at a time, to a None
        for _ in iter(deliveries.get, None):
            written[0] += 1
            streamer.written()

    written = [0]
    streamer = Streamer(Source(fs, CommitNotifier(), TidIndex()), z64, send,
                        lambda error: ended.set(), name='test', in_flight=2)
    consumer = threading.Thread(target=deliver)
    consumer.start()
    streamer.finish()
    streamer.start()
    assert ended.wait(60)
    deliveries.put(None)
    consumer.join(60)
    fs.close()
    chunks = [chunk for batch in sent for chunk in batch]
    assert max(len(chunk) for chunk in chunks) <= SLICE
    assert sum(len(chunk) for chunk in chunks) > 8 * SLICE
    assert max(outstanding) <= 2
