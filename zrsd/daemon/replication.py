"""The replication side of a process, wired once for both ways to run zrsd.

A `Replication` holds the nodes (`zrsd.daemon.node.Node`) of some `<zrs>`
sections and runs their links in a reactor thread:

- `zrsd -C FILE` (`zrsd.daemon.main.Daemon`) makes one for all of its sections,
  with its own reactor thread, whose crash stops the daemon;
- `%import zrsd` inside a plain runzeo configuration (`ZRSConfig.open`,
  through `open_section`) makes one per section; they share the process's
  reactor thread (Twisted has one reactor per process), whose crash sends
  the process SIGTERM, so that runzeo stops instead of serving replicas
  that silently stopped replicating.

Stopping is the same for both: no more commits, connected secondaries
catch up (bounded), then every link stops and the streamer threads are
joined.  Methods are called from any thread but the reactor's.
"""
import atexit
import logging
import os
import signal
import threading

from twisted.internet import defer

from zrsd.daemon.node import Node
from zrsd.daemon.reactor import ReactorThread

logger = logging.getLogger(__name__)

STREAMER_JOIN_TIMEOUT = 10.0


class Replication:
    """The nodes of some `<zrs>` sections and their reactor thread."""

    def __init__(self, sections, reactor_thread):
        self.reactor_thread = reactor_thread
        self.nodes = []
        try:
            for zrs in sections:
                self.nodes.append(Node(zrs))
        except BaseException:
            for node in self.nodes:
                node.storage.close()
            raise

    def start(self):
        """Start the reactor thread if needed, then every node's links."""
        if not self.reactor_thread.running:
            self.reactor_thread.start()
        self.call(self._start)

    def _start(self):
        for node in self.nodes:
            node.start(self.reactor_thread.reactor)

    def call(self, function, *args, **kw):
        """Run `function` in the reactor thread; its result (a Deferred's
        result is waited for)."""
        return self.reactor_thread.call(function, *args, **kw)

    def promote(self, node):
        """Promote `node` (a replica): returns its new, writable storage."""
        return self.call(node.promote)

    def stop(self):
        """Stop every node: no more commits, secondaries catch up (each
        node's `shutdown-catch-up-timeout`), then all links stop."""
        if not self.nodes or self.reactor_thread.crashed.is_set() or \
                not self.reactor_thread.running:
            return
        self.call(self._drain)
        for streamer in self.call(self._stop):
            streamer.join(STREAMER_JOIN_TIMEOUT)

    def _drain(self):
        return defer.DeferredList([node.drain() for node in self.nodes])

    def _stop(self):
        streamers = []
        for node in self.nodes:
            streamers.extend(node.stop())
        return streamers


# -- %import zrsd: sections opened by ZConfig inside runzeo -------------------

_process_reactor = None
_process_reactor_lock = threading.Lock()


def _terminate_process():
    # Reactor thread, after ReactorThread logged CRITICAL: runzeo's own
    # SIGTERM handling stops the server.
    os.kill(os.getpid(), signal.SIGTERM)


def process_reactor_thread():
    """The reactor thread shared by the sections ZConfig opens; stopped at
    interpreter exit."""
    global _process_reactor
    with _process_reactor_lock:
        if _process_reactor is None:
            _process_reactor = ReactorThread(on_crash=_terminate_process)
            atexit.register(_process_reactor.stop)
        return _process_reactor


def open_section(zrs):
    """Open one `<zrs>` section's storage with its links running (for
    `%import zrsd` in runzeo); closing the storage stops them."""
    replication = Replication([zrs], process_reactor_thread())
    node = replication.nodes[0]
    if node.replicating:
        # runzeo opens storages before its server exists: see
        # ReplicaStorage.hold_commits_until_registered.
        node.storage.hold_commits_until_registered()
    try:
        replication.start()
    except BaseException:
        node.storage.close()
        raise
    node.storage.before_close = replication.stop
    return node.storage
