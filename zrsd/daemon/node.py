"""One `<zrs>` section at run time: its storage and its replication links.

Roles, by the section's keys:

- replica (`replicate-from`): `ReplicaStorage`, read-only, and a
  `ReplicationClient`;
- primary (`replicate-to`): `PrimaryStorage`, writable, and a
  `PrimaryServer`;
- cascade (both): `ReplicaStorage`, a client and a server.

`start` and `stop` run in the reactor thread.
"""
import logging

from twisted.internet import defer, task
from ZODB.utils import z64

from zrsd import disk
from zrsd.daemon import promotion
from zrsd import protocol
from zrsd.replica.client import (LinkSettings, ReplicationClient,
                                 tcp_endpoint)
from zrsd.daemon.progress import Progress, tid_time
from zrsd.primary.server import PrimaryServer, ServerSettings
from zrsd.network.sockets import format_address
from zrsd.primary.storage import PrimaryStorage
from zrsd.replica import seeding
from zrsd.replica.storage import ReplicaStorage, open_replica_file

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 10.0  # seconds between catch-up progress lines


class Node:
    """The storage of one `<zrs>` section and its client and server."""

    def __init__(self, zrs):
        self.zrs = zrs
        self.name = zrs.name
        self.label = '<zrs %s>' % self.name
        # A replica promoted earlier (zrsdctl promote) stays a primary.
        self.promotion = (promotion.read_record(zrs.path)
                          if zrs.replicate_from is not None else None)
        disk.ensure_unlocked(zrs.path)
        if self.replicating:
            seeding.copy_file(zrs)
            fs = disk.opened(zrs.path, lambda: open_replica_file(
                zrs.path, zrs.open_base), zrs.blob_dir)
        else:
            fs = disk.opened(zrs.path, zrs.open_base, zrs.blob_dir)
        try:
            if self.replicating:
                self.storage = ReplicaStorage(fs, pack=zrs.section.pack)
            else:
                self.storage = PrimaryStorage(fs)
        except BaseException:
            fs.close()
            raise
        self.progress = Progress(self.label)
        self.client = None
        self.server = None
        self._ticker = None
        logger.info('%s: %s of %s, last transaction %s', self.label,
                    self.role, fs.getName(), self.storage.resume_tid.hex())
        if self.promotion is not None:
            self._log_promoted_at_start()

    @property
    def replicating(self):
        """Does this node follow a primary (a replica or a cascade)?"""
        return self.zrs.replicate_from is not None and self.promotion is None

    @property
    def role(self):
        """The section's role, unless it was promoted: then primary."""
        return self.zrs.role if self.replicating else 'primary'

    def _log_promoted_at_start(self):
        record, path = self.promotion, promotion.record_path(self.zrs.path)
        if record.get('state') != promotion.DONE:
            # Requested while zrsd was not running (or before it acted).
            self.promotion = record = promotion.mark_done(
                self.zrs.path, record, self.storage.resume_tid.hex())
        logger.warning(
            '%s: promoted to primary on %s (recorded in %s): replicate-from '
            '%s is ignored.  To make it a replica again: stop zrsd, remove '
            '%s (and run zrsd-rewind if it committed since)', self.label,
            record.get('promoted_at'), path,
            format_address(self.zrs.replicate_from), path)

    def promote(self):
        """Become a primary (reactor thread): stop replicating for good,
        then make the storage writable.  Returns the new storage, which
        the caller puts in place of the old one for ZEO."""
        if not self.replicating:
            return None
        self.client.stop()
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        replica = self.storage
        self.storage = PrimaryStorage.promoted(replica)
        if self.server is not None:
            self.server.storage = self.storage
        last = self.storage.lastTransaction().hex()
        self.promotion = promotion.mark_done(
            self.zrs.path, promotion.read_record(self.zrs.path) or {}, last)
        path = promotion.record_path(self.zrs.path)
        logger.warning(
            '%s: promoted to primary at %s: replication from %s stopped for '
            'good; ZEO is writable%s.  Recorded in %s: a restart stays '
            'primary.  To make it a replica again: stop zrsd, remove %s '
            '(and run zrsd-rewind if it committed since)', self.label, last,
            format_address(self.zrs.replicate_from),
            '; secondaries keep following at %s' % format_address(
                self.server.listening_address()) if self.server else '',
            path, path)
        return self.storage

    def start(self, reactor):
        """Start replicating and/or serving secondaries (reactor thread)."""
        zrs, section = self.zrs, self.zrs.section
        if zrs.replicate_to is not None:
            self.server = PrimaryServer(
                self.name, self.storage, zrs.replicate_to, reactor,
                ServerSettings(
                    handshake_timeout=section.handshake_timeout,
                    tls=zrs.tls,
                    allowed_networks=tuple(zrs.allowed_networks),
                    max_secondaries=section.max_secondaries))
            self.server.start()
        if self.replicating:
            self.client = ReplicationClient(
                self.name, self.storage, zrs.replicate_from,
                tcp_endpoint(reactor, zrs.replicate_from, tls=zrs.tls),
                reactor, LinkSettings(
                    protocol_name=(protocol.PROTOCOL_2_1
                                   if self.storage.has_blobs
                                   else protocol.PROTOCOL_2_0),
                    decoder=zrs.decoder(),
                    check_checksums=section.check_checksums,
                    max_frame=section.max_message_size,
                    keep_alive_delay=section.keep_alive_delay,
                    reconnect_delay=section.reconnect_delay,
                    max_reconnect_delay=section.max_reconnect_delay),
                on_commit=self.progress.committed)
            self.client.start()
            self._ticker = task.LoopingCall(self.progress.tick)
            self._ticker.clock = reactor
            self._ticker.start(PROGRESS_INTERVAL, now=False)

    def drain(self):
        """The first step of a stop (reactor thread): no more commits
        (ZEO's, or replicated ones for a cascade), then let the connected
        secondaries receive everything committed, for up to
        `shutdown-catch-up-timeout` seconds.  Returns a Deferred."""
        if self.client is not None:
            self.client.stop()
        if hasattr(self.storage, 'stop_commits'):
            self.storage.stop_commits()
        if self.server is None:
            return defer.succeed(None)
        return self.server.drain(self.zrs.section.shutdown_catch_up_timeout)

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

    @property
    def state(self):
        """Where this node is (see zrsd.daemon.metrics.STATES): a primary
        is `primary`; a replica is `waiting` (connected, empty),
        `catching_up`, `streaming`, `disconnected` or `refused`."""
        if not self.replicating:
            return 'primary'
        if self.client is None:
            return 'disconnected'
        state = self.client.state
        if state == 'streaming' and self.storage.lastTransaction() == z64:
            return 'waiting'
        return state

    def status(self, now):
        """A snapshot of this node for /status and /metrics (reactor
        thread)."""
        last = self.storage.lastTransaction()
        progress, client, server = self.progress, self.client, self.server
        last_time = tid_time(last) if last != z64 else None
        status = {
            'name': self.name,
            'role': self.role,
            'state': self.state,
            'last_transaction': last.hex(),
            'last_transaction_time': last_time,
            'storage_size_bytes': self.storage.getSize(),
        }
        if self.replicating:
            status.update(
                primary=format_address(self.zrs.replicate_from),
                connected=int(client is not None and client.connected),
                refused=int(client is not None and client.refused),
                lag_seconds=(0.0 if status['state'] == 'streaming'
                             else now - last_time if last_time else None),
                transactions_applied=progress.transactions,
                bytes_applied=progress.bytes,
                last_applied_time=progress.last_commit_at,
                rate=progress.rate)
            if client is not None:
                status.update(reconnects=client.reconnects,
                              stream_failures=client.stream_failures,
                              checksum_failures=client.checksum_failures)
        if server is not None:
            secondaries = server.secondaries()
            status.update(secondaries_connected=len(secondaries),
                          secondaries=secondaries,
                          replicate_to=format_address(
                              server.listening_address()))
        return status
