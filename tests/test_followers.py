"""A caught-up streamer lends its stream to the reactor thread
(`zrsd.primary.followers`): small commits are sent from there, a large one
or a paused connection hands the stream back to the streamer thread, and
the secondary sees one stream, in order, with every checksum right.

In-process on a real FileStorage; the reactor is a thread running what it
is given (`callFromThread`), like Twisted's.
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
    """A secondary's connection: what is written, in the order written
    (by the reactor thread), and by which path."""

    def __init__(self, fs, reactor):
        self.reactor, self.payloads, self.paths = reactor, [], []
        self.ended = queue.Queue()
        self.notifier = CommitNotifier()
        self.followers = Followers(self.notifier, reactor)
        self.followers.start()
        self.streamer = Streamer(
            Source(fs, self.notifier, TidIndex(), followers=self.followers),
            z64, send=lambda chunks: reactor.callFromThread(
                self._write, chunks, 'thread'),
            done=self.ended.put, name='test', in_flight=4,
            send_now=lambda chunks: self._write(chunks, 'reactor'))

    def _write(self, chunks, path):
        assert threading.current_thread() is self.reactor.thread
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


def test_small_commits_go_from_the_reactor_large_ones_from_the_thread(fs):
    reactor = ThreadReactor()
    link = Link(fs, reactor)
    tids = [commit(fs, link.notifier)]
    link.streamer.start()
    wait_for(link, tids)                       # caught up, then lent
    tids += [commit(fs, link.notifier) for _ in range(20)]
    wait_for(link, tids)
    assert link.paths[-1] == 'reactor'
    tids.append(commit(fs, link.notifier,
                       size=streamer_module.FOLLOW_LIMIT + 1))
    tids += [commit(fs, link.notifier) for _ in range(5)]
    wait_for(link, tids)
    assert 'thread' in link.paths[link.paths.index('reactor'):]
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
    # The transport pauses its producer while it is being written to.
    write = link._write

    def pausing(chunks, path):
        write(chunks, path)
        if path == 'reactor':
            link.streamer.pause()
    link._write = pausing
    tids.append(commit(fs, link.notifier))
    wait_for(link, tids)
    tids.append(commit(fs, link.notifier))     # sent after the resume
    reactor.run(lambda: None)
    assert link.tids() == tids[:-1]
    link._write = write
    reactor.run(link.streamer.resume)
    wait_for(link, tids)
    reactor.run(link.streamer.finish)          # stops once all is sent
    assert link.ended.get(timeout=30) is None
