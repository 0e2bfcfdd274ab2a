"""The caught-up secondaries of one storage, served by the committing thread.

A caught-up `zrsd.primary.streamer.Streamer` lends its stream to its
server's `Followers`: each commit then sends the new transactions to every
caught-up secondary from the thread that committed (ZEO's event loop, on
its next turn after answering the committer), through each connection's
`zrsd.network.outbox.Outbox`, straight to the socket.  Waking each
streamer's thread, or the reactor thread, would cost thread switches and
GIL hand-offs on the thread that serves ZEO clients, the primary's own
work, and a dozen system calls per secondary and commit.

A streamer takes its stream back (`Streamer.follow_step` returns False)
for whatever the committing thread must not do: a large transaction, blob
files, a paused connection, a pack, an error, a stop.

Threads: `committed` is called by whatever commits; `lend` by a streamer
thread; `start` and `stop` by the reactor thread.
"""
import threading


class Followers:
    """The streamers of one storage that are lent to the committing
    thread."""

    def __init__(self, notifier):
        self._notifier = notifier
        self._lock = threading.Lock()
        self._streamers = set()

    def start(self):
        self._notifier.subscribe(self.committed)

    def stop(self):
        self._notifier.unsubscribe(self.committed)

    def committed(self):
        """A commit: one step for every follower, in this thread."""
        with self._lock:
            streamers = list(self._streamers)
        for streamer in streamers:
            self._step(streamer)

    def lend(self, streamer):
        """A caught-up streamer's stream (the streamer's own thread), sent
        by the committing thread from now on, until `streamer.follow_step()`
        returns False.  Its first step runs here: for what was committed
        since the streamer last looked."""
        with self._lock:
            self._streamers.add(streamer)
        self._step(streamer)

    def _step(self, streamer):
        if not streamer.follow_step():
            with self._lock:
                # Lent again meanwhile (by its thread, after the hand-back):
                # it stays.
                if not streamer.lent:
                    self._streamers.discard(streamer)
