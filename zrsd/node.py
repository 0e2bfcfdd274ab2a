"""One `<zrs>` section at run time: its storage and its replication links.

Roles, by the section's keys:

- replica (`replicate-from`): `ReplicaStorage`, read-only, and a
  `ReplicationClient`;
- primary (`replicate-to`): `PrimaryStorage`, writable, and a
  `PrimaryServer`;
- cascade (both): `ReplicaStorage`, a client and a server.

`start` and `stop` run in the reactor thread.
"""
import atexit
import logging
import threading

from twisted.internet import task
from ZODB.utils import z64

from . import protocol
from .client import ReplicationClient, tcp_endpoint
from .progress import Progress, tid_time
from .reactor import ReactorThread
from .server import PrimaryServer
from .sockets import format_address
from .storage import PrimaryStorage, ReplicaStorage

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 10.0  # seconds between catch-up progress lines


class Node:
    """The storage of one `<zrs>` section and its client and server."""

    def __init__(self, zrs):
        self.zrs = zrs
        self.name = zrs.name
        fs = zrs.open_base()
        try:
            if zrs.replicate_from is not None:
                self.storage = ReplicaStorage(fs, pack=zrs.section.pack)
            else:
                self.storage = PrimaryStorage(fs)
        except BaseException:
            fs.close()
            raise
        self.role = ('cascade' if zrs.replicate_from and zrs.replicate_to
                     else 'replica' if zrs.replicate_from else 'primary')
        self.progress = Progress('<zrs %s>' % self.name)
        self.client = None
        self.server = None
        self._ticker = None
        logger.info('<zrs %s>: %s of %s, last transaction %s', self.name,
                    self.role, fs.getName(), self.storage.resume_tid.hex())

    def start(self, reactor):
        """Start replicating and/or serving secondaries (reactor thread)."""
        zrs, section = self.zrs, self.zrs.section
        if zrs.replicate_to is not None:
            self.server = PrimaryServer(
                self.name, self.storage, zrs.replicate_to, reactor,
                handshake_timeout=section.handshake_timeout,
                tls=zrs.tls, allowed_networks=zrs.allowed_networks)
            self.server.start()
        if zrs.replicate_from is not None:
            self.client = ReplicationClient(
                self.name, self.storage, zrs.replicate_from,
                tcp_endpoint(reactor, zrs.replicate_from, tls=zrs.tls),
                reactor,
                protocol_name=(protocol.PROTOCOL_2_1
                               if self.storage.has_blobs
                               else protocol.PROTOCOL_2_0),
                decoder=zrs.decoder(),
                check_checksums=section.check_checksums,
                max_frame=section.max_message_size,
                keep_alive_delay=section.keep_alive_delay,
                reconnect_delay=section.reconnect_delay,
                max_reconnect_delay=section.max_reconnect_delay,
                on_commit=self.progress.committed)
            self.client.start()
            self._ticker = task.LoopingCall(self.progress.tick)
            self._ticker.clock = reactor
            self._ticker.start(PROGRESS_INTERVAL, now=False)

    def stop(self):
        """Stop both links; returns streamer threads to join (reactor
        thread)."""
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        if self.client is not None:
            self.client.stop()
        streamers = self.server.stop() if self.server is not None else []
        self.storage.commits.wake()
        return streamers

    def status(self, now):
        """A snapshot of this node for /status and /metrics (reactor
        thread)."""
        last = self.storage.lastTransaction()
        progress, client, server = self.progress, self.client, self.server
        status = {
            'name': self.name,
            'role': self.role,
            'last_transaction': last.hex(),
            'last_transaction_time': (tid_time(last) if last != z64
                                      else None),
        }
        if client is not None:
            status.update(
                primary=format_address(self.zrs.replicate_from),
                connected=int(client.connected),
                state=client.state,
                refused=int(client.refused),
                transactions_applied=progress.transactions,
                bytes_applied=progress.bytes,
                seconds_since_last_applied=(
                    now - progress.last_commit_at
                    if progress.last_commit_at is not None else None),
                rate=progress.rate,
                reconnects=client.reconnects,
                stream_failures=client.stream_failures,
                checksum_failures=client.checksum_failures)
        if server is not None:
            status.update(secondaries=len(server.connections),
                          replicate_to=format_address(
                              server.listening_address()))
        return status


def join_streamers(streamers, timeout=10.0):
    """Wait for stopped streamer threads (not from the reactor thread)."""
    for streamer in streamers:
        streamer.join(timeout)


_shared = None
_shared_lock = threading.Lock()


def shared_reactor_thread():
    """The process-wide reactor thread for storages opened by ZConfig.

    Started on first use; stopped at interpreter exit.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ReactorThread()
            _shared.start()
            atexit.register(_shared.stop)
        return _shared


def open_standalone(zrs):
    """Open a `<zrs>` section's storage with replication running.

    For `%import zrsd` inside a plain runzeo config: closing the returned
    storage stops its links.
    """
    reactor = shared_reactor_thread()
    node = Node(zrs)
    if zrs.replicate_from is not None:
        node.storage.hold_commits_until_registered()
    reactor.call(node.start, reactor.reactor)

    def stop_links():
        join_streamers(reactor.call(node.stop))

    node.storage.before_close = stop_links
    return node.storage
