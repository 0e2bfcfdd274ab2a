"""A caught-up streamer lends its stream to the committing thread
(`zrsd.primary.followers`): small commits are sent from there, a large one
or a paused connection hands the stream back to the streamer thread, and
the secondary sees one stream, in order, with every checksum right.

In-process on a real FileStorage; the reactor is a thread running what it
is given (`callFromThread`), like Twisted's.  `tests/test_outbox.py` covers
the socket side.
"""
import queue
import threading

import pytest
import ZODB.FileStorage
from ZODB.Connection import TransactionMetaData
from ZODB.utils import z64

from harness.process import wait_until
from zrsd import protocol
from zrsd.primary import streamer as streamer_module
from zrsd.primary.followers import Followers
from zrsd.primary.history import TidIndex
from zrsd.primary.storage import CommitNotifier
from zrsd.primary.streamer import Source, Streamer


class ThreadReactor:
    """`callFromThread` runs the call in this object's own thread."""

    def __init__(self):
        self.calls = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def callFromThread(self, function, *args):
        self.calls.put((function, args))

    def _run(self):
        for function, args in iter(self.calls.get, None):
            function(*args)

    def run(self, function, *args):
        """Call `function` in the reactor thread and wait for it."""
        done = threading.Event()
        self.callFromThread(lambda: (function(*args), done.set()))
        assert done.wait(30)


class Link:
    """A secondary's connection: what is written, in the order written,
    and by which path: 'thread' (the streamer thread's, through the
    reactor thread) or the name of the thread that sent a lent stream."""

    def __init__(self, fs, reactor):
        self.reactor, self.payloads, self.paths = reactor, [], []
        self.ended = queue.Queue()
        self.notifier = CommitNotifier()
        self.followers = Followers(self.notifier)
        self.followers.start()
        self.streamer = Streamer(
            Source(fs, self.notifier, TidIndex(), followers=self.followers),
            z64, send=lambda chunks: reactor.callFromThread(
                self._write, chunks, 'thread'),
            done=self.ended.put, name='test', in_flight=4,
            send_now=lambda chunks: self._write(
                chunks, threading.current_thread().name))
        self._lock = threading.Lock()

    def _write(self, chunks, path):
        if path == 'thread':
            assert threading.current_thread() is self.reactor.thread
        with self._lock:
            self.payloads.extend(chunks[1::2])    # [length, payload, ...]
            self.paths.append(path)
        if path == 'thread':
            self.streamer.written()

    def tids(self):
        """The tids begun, checking every checksum on the way."""
        decoder, checksum = protocol.MessageDecoder(), None
        tids, data_follows = [], False
        for payload in self.payloads:
            message = None if data_follows else decoder.decode(payload)
            data_follows = isinstance(message, protocol.Store)
            if isinstance(message, protocol.Begin):
                tids.append(message.tid)
                checksum = checksum or protocol.StreamChecksum(z64)
            elif isinstance(message, protocol.Commit):
                assert message.checksum == checksum.digest()
            checksum.update(payload)
        return tids


def commit(fs, notifier, size=100):
    meta = TransactionMetaData()
    fs.tpc_begin(meta)
    fs.store(fs.new_oid(), z64, b'x' * size, '', meta)
    fs.tpc_vote(meta)
    tid = fs.tpc_finish(meta)
    notifier.notify([tid])
    return tid


@pytest.fixture
def fs(tmp_path):
    fs = ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs'))
    yield fs
    fs.close()


def wait_for(link, tids):
    wait_until(lambda: link.tids() == tids, 30,
               message='the stream has %d transactions' % len(tids))


def test_small_commits_go_from_the_committer_large_ones_from_the_thread(fs):
    reactor = ThreadReactor()
    link = Link(fs, reactor)
    tids = [commit(fs, link.notifier)]
    link.streamer.start()
    wait_for(link, tids)                       # caught up, then lent
    wait_until(lambda: link.streamer.lent, 30, message='lent')
    committer = threading.current_thread().name
    tids += [commit(fs, link.notifier) for _ in range(20)]
    wait_for(link, tids)
    assert link.paths[-20:] == [committer] * 20
    tids.append(commit(fs, link.notifier,
                       size=streamer_module.FOLLOW_LIMIT + 1))
    tids += [commit(fs, link.notifier) for _ in range(5)]
    wait_for(link, tids)
    assert 'thread' in link.paths[link.paths.index(committer):]
    reactor.run(link.streamer.stop)
    assert link.ended.get(timeout=30) is None
    link.streamer.join(30)
    assert not link.streamer._thread.is_alive()


def test_a_pause_in_the_reactor_hands_the_stream_back(fs):
    reactor = ThreadReactor()
    link = Link(fs, reactor)
    tids = [commit(fs, link.notifier)]
    link.streamer.start()
    wait_for(link, tids)
    wait_until(lambda: link.streamer.lent, 30, message='lent')
    reactor.run(link.streamer.pause)           # the transport is full
    assert not link.streamer.lent
    tids.append(commit(fs, link.notifier))     # sent after the resume
    reactor.run(lambda: None)
    assert link.tids() == tids[:-1]
    reactor.run(link.streamer.resume)
    wait_for(link, tids)
    reactor.run(link.streamer.finish)          # stops once all is sent
    assert link.ended.get(timeout=30) is None
