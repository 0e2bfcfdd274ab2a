"""The caught-up secondaries of one storage, served from the reactor thread.

A caught-up `zrsd.primary.streamer.Streamer` lends its stream to its
server's `Followers`: each commit then costs one wake-up of the reactor
thread, which sends the new transactions to every caught-up secondary
itself, instead of waking each streamer's thread, which would hand its
frames back to the reactor thread.  Every one of those hops takes the GIL
from the thread that serves ZEO clients, the primary's own work.

A streamer takes its stream back (`Streamer.follow_step` returns False)
for whatever the reactor must not do: a large transaction, blob files, a
paused connection, a pack, an error, a stop.

Threads: `committed` is called by whatever commits (any thread); `lend`
by a streamer thread; the rest runs in the reactor thread.
"""


class Followers:
    """The streamers of one storage that are lent to the reactor thread."""

    def __init__(self, notifier, reactor):
        self._notifier = notifier
        self._reactor = reactor
        self._streamers = set()     # reactor thread only
        self._scheduled = False     # a step is on its way to the reactor

    def start(self):
        self._notifier.subscribe(self.committed)

    def stop(self):
        self._notifier.unsubscribe(self.committed)

    def committed(self):
        """A commit: one step for every follower, in the reactor thread
        (several commits before it runs share it)."""
        if self._streamers and not self._scheduled:
            self._scheduled = True
            self._reactor.callFromThread(self._step)

    def lend(self, streamer):
        """A caught-up streamer's stream, sent from the reactor thread from
        now on, until `streamer.follow_step()` returns False."""
        self._reactor.callFromThread(self._take, streamer)

    def _take(self, streamer):
        # Among the followers first: a commit from now on is its step.
        self._streamers.add(streamer)
        if not streamer.follow_step():
            self._streamers.discard(streamer)

    def _step(self):
        # Cleared first: a commit from now on schedules the next step.
        self._scheduled = False
        for streamer in list(self._streamers):
            if not streamer.follow_step():
                self._streamers.discard(streamer)
