"""A caught-up streamer lends its stream to the committing thread
(`zrsd.primary.followers`): small commits are sent from there, a large one
or a paused connection hands the stream back to the streamer thread, and
the secondary sees one stream, in order, with every checksum right.

In-process on a real FileStorage and a real reactor in its own thread.
`tests/test_outbox.py` covers the socket side.
"""
import queue
import threading

import pytest
import ZODB.FileStorage
from twisted.internet.epollreactor import EPollReactor
from ZODB.utils import z64

from harness.history import commit_object
from harness.process import wait_until
from zrsd import protocol
from zrsd.daemon.reactor import ReactorThread
from zrsd.primary import streamer as streamer_module
from zrsd.primary.followers import Followers
from zrsd.primary.history import TidIndex
from zrsd.primary.storage import CommitNotifier
from zrsd.primary.streamer import Source, Streamer


class Link:
    """A secondary's connection: what is written, in the order written,
    and by which path: 'thread' (the streamer thread's, through the
    reactor thread, a `ReactorThread`) or the name of the thread that sent
    a lent stream; the tids `committed` by `commit()`."""

    def __init__(self, fs, reactor):
        self.fs, self.reactor, self.payloads, self.paths = fs, reactor, [], []
        self.committed, self.ended = [], queue.Queue()
        self.notifier = CommitNotifier()
        self.followers = Followers(self.notifier)
        self.followers.start()
        self.streamer = Streamer(
            Source(fs, self.notifier, TidIndex(), followers=self.followers),
            z64, send=lambda chunks: reactor.reactor.callFromThread(
                self._write, chunks, 'thread'),
            done=self.ended.put, name='test', in_flight=4,
            send_now=lambda chunks: self._write(
                chunks, threading.current_thread().name))
        self._lock = threading.Lock()

    def _write(self, chunks, path):
        if path == 'thread':
            assert threading.current_thread().name == 'zrsd-reactor'
        with self._lock:
            self.payloads.extend(chunks[1::2])    # [length, payload, ...]
            self.paths.append(path)
        if path == 'thread':
            self.streamer.written()

    def commit(self, count=1, size=100):
        """`count` transactions storing `size` bytes, each announced."""
        for _ in range(count):
            self.committed.append(commit_object(self.fs, data=b'x' * size))
            self.notifier.notify(self.committed[-1:])

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

    def wait(self):
        wait_until(lambda: self.tids() == self.committed, 30,
                   message='the stream has %d transactions'
                   % len(self.committed))


@pytest.fixture
def link(tmp_path):
    """A started `Link` on a new file, caught up with a commit, then lent."""
    fs = ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs'))
    reactor = ReactorThread(EPollReactor())
    reactor.start()
    link = Link(fs, reactor)
    link.commit()
    link.streamer.start()
    link.wait()
    wait_until(lambda: link.streamer.lent, 30, message='lent')
    yield link
    reactor.stop()
    fs.close()


def test_small_commits_go_from_the_committer_large_ones_from_the_thread(link):
    committer = threading.current_thread().name
    link.commit(20)
    link.wait()
    assert link.paths[-20:] == [committer] * 20
    link.commit(size=streamer_module.FOLLOW_LIMIT + 1)
    link.commit(5)
    link.wait()
    assert 'thread' in link.paths[link.paths.index(committer):]
    link.reactor.call(link.streamer.stop)
    assert link.ended.get(timeout=30) is None
    link.streamer.join(30)
    assert not link.streamer._thread.is_alive()


def test_a_pause_in_the_reactor_hands_the_stream_back(link):
    link.reactor.call(link.streamer.pause)     # the transport is full
    assert not link.streamer.lent
    link.commit()                               # sent after the resume
    link.reactor.call(lambda: None)
    assert link.tids() == link.committed[:-1]
    link.reactor.call(link.streamer.resume)
    link.wait()
    link.reactor.call(link.streamer.finish)     # stops once all is sent
    assert link.ended.get(timeout=30) is None
