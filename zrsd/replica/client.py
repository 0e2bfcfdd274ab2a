"""The secondary's Twisted client: connect, handshake, feed, keep alive.

Everything here runs in the reactor thread.  `ReplicationClient` keeps one
storage connected to its primary, reconnecting with backoff; each connection
is a `SecondaryProtocol` that sends the handshake, turns bytes into frames
(`zrsd.protocol.FrameDecoder`) and frames into applied transactions
(`zrsd.replica.receiver.Receiver`).
"""
import dataclasses
import logging
import re
import time

import zope.interface
from twisted.internet import endpoints, interfaces, protocol, task

from zrsd import disk
from zrsd import protocol as zrs
from zrsd.network.factory import ProtocolFactory
from zrsd.network.retry import RepeatLimiter, backoff_delay
from zrsd.network.sockets import (format_address, is_tls_failure,
                                  pending_bytes, quick_ack, tcp_socket,
                                  tune_socket)
from zrsd.replica.receiver import Receiver
from zrsd.tids import describe_tid

logger = logging.getLogger(__name__)

# Group commit bounds: fsync at least this often during a catch-up.
SYNC_INTERVAL = 1.0
SYNC_TRANSACTIONS = 1000

READ_SIZE = 1 << 20  # bytes per socket read (Twisted's default: 64 KiB)

# A primary that refuses a secondary (a history it does not hold, a protocol
# it does not serve) closes the link right after the handshake: nothing else
# in the ZRS protocol can say so.  This many such closes in a row, each
# within REFUSAL_WINDOW seconds of the connection, mean "refused".
REFUSALS = 3
REFUSAL_WINDOW = 30.0


@dataclasses.dataclass(frozen=True)
class LinkSettings:
    """How a secondary talks to its primary (the `<zrs>` keys of a replica:
    see `zrsd.config`)."""
    protocol_name: bytes = zrs.PROTOCOL_2_0
    decoder: zrs.MessageDecoder = dataclasses.field(
        default_factory=zrs.MessageDecoder)
    check_checksums: bool = True
    max_frame: int = zrs.DEFAULT_MAX_FRAME
    keep_alive_delay: float = 60.0
    reconnect_delay: float = 1.0
    max_reconnect_delay: float = 60.0


ZEO_GREETING = re.compile(rb'^[ZM][0-9]{1,5}$')


class NotAPrimary(zrs.ProtocolError):
    """The server at replicate-from speaks another protocol (ZEO)."""


@zope.interface.implementer(interfaces.IHandshakeListener)
class SecondaryProtocol(protocol.Protocol):
    """One connection from this secondary to its primary."""

    receiver = None
    _keep_alive = None
    _failed = False
    _received = False   # any byte from the primary on this connection
    _framed = False     # any frame from it

    def __init__(self, client):
        self.client = client
        self.peer = client.peer

    def connectionMade(self):
        client = self.client
        self._socket = tcp_socket(self.transport)
        if self._socket is not None:
            tune_socket(self._socket, client.settings.keep_alive_delay)
        if hasattr(self.transport, 'bufferSize'):
            # Read a catch-up backlog in big pieces: fewer calls per MB.
            self.transport.bufferSize = READ_SIZE
        settings = client.settings
        start_tid = client.storage.writer.last_applied()
        self.receiver = Receiver(
            client.storage.writer, start_tid, decoder=settings.decoder,
            check_checksums=settings.check_checksums,
            on_commit=client.committed)
        self.frames = zrs.FrameDecoder(self._frame, settings.max_frame)
        self.transport.write(zrs.encode_frame(settings.protocol_name))
        self.transport.write(zrs.encode_frame(start_tid))
        self._start_tid = start_tid
        if settings.keep_alive_delay > 0:
            self._keep_alive = task.LoopingCall(self._send_keep_alive)
            self._keep_alive.clock = client.clock
            self._keep_alive.start(settings.keep_alive_delay, now=False)
        client.storage.writer.defer_sync = True
        client.connection_made(self)
        if not interfaces.ISSLTransport.providedBy(self.transport):
            self.handshakeCompleted()

    def handshakeCompleted(self):
        """Connected: at once over TCP, after the TLS handshake (which
        verified the primary) with TLS (IHandshakeListener)."""
        logger.info('%s: connected (%s), requesting transactions after %s',
                    self.peer, self.client.settings.protocol_name.decode(),
                    describe_tid(self._start_tid))
        self.client.established()

    def _frame(self, payload):
        # A ZEO server frames its messages the way ZRS does, and greets
        # first with its protocol (b'Z5', b'M5', ...): replicate-from then
        # names a ZEO address.  Say so, instead of failing to unpickle.
        if not self._framed and ZEO_GREETING.match(payload):
            raise NotAPrimary(
                'this looks like a ZEO server (it greets with %r), not a ZRS '
                'primary: replicate-from must be the primary\'s replication '
                'address (its replicate-to), not its ZEO address'
                % payload.decode('ascii'))
        self._framed = True
        self.receiver.frame_received(payload)

    def _send_keep_alive(self):
        self.transport.write(zrs.EMPTY_FRAME)

    def dataReceived(self, data):
        if self._failed:
            return
        if not self._received:
            self._received = True
            self.client.accepted()
        try:
            self.frames.feed(data)
            # More of the stream already waiting in the socket means a
            # backlog: commits are then fsynced as a group, and ACKs go out
            # with the data anyway.
            backlog = self._socket is not None and pending_bytes(self._socket)
            self.client.backlog = bool(backlog)
            self._sync_unless(backlog)
        except disk.StorageFailure as failure:
            # Fail-stop (zrsd.disk): the process exits here.
            self.client.storage.writer.storage_failed(failure)
            self._fail('applying transaction %s failed: %s' % (
                describe_tid(self.receiver.failed_tid), failure))
            return
        except NotAPrimary as exc:
            self._fail(str(exc), repeats=self.client.apply_errors,
                       traceback=False)
            return
        except zrs.ProtocolError as exc:
            if isinstance(exc, zrs.ChecksumMismatch):
                self.client.checksum_failures += 1
            self._fail('replication stream rejected: %s' % exc)
            return
        except Exception as exc:
            # E.g. a full disk: the same failure comes back at every retry,
            # so the traceback is logged once and repeats are rate-limited.
            self._fail('applying transaction %s failed: %s: %s' % (
                describe_tid(self.receiver.failed_tid),
                type(exc).__name__, exc), repeats=self.client.apply_errors)
            return
        if self._socket is not None and not backlog:
            quick_ack(self._socket)

    def _sync_unless(self, backlog):
        """Group commit: fsync once the backlog is drained.

        While more of the stream already waits in the socket, commits are
        not fsynced one by one; they are when the stream pauses (so live
        replication stays durable commit by commit), and at least every
        SYNC_INTERVAL seconds or SYNC_TRANSACTIONS transactions during a
        long catch-up.
        """
        writer = self.client.storage.writer
        if writer.unsynced and (
                not backlog or writer.unsynced >= SYNC_TRANSACTIONS
                or time.monotonic() - writer.unsynced_since >= SYNC_INTERVAL):
            writer.sync()

    def _fail(self, reason, repeats=None, traceback=True):
        # A failure inside the receiver has aborted already; one in the
        # framing (e.g. a frame too large) has not.
        self.receiver.abort()
        self._failed = True
        text = '%s: %s; open transaction aborted, reconnecting' % (
            self.peer, reason)
        if repeats is None:
            logger.error(text)
        else:
            first = repeats.check(text, self.client.clock.seconds())
            if first is None:
                logger.debug(text)
            else:
                # The traceback once; its repeats carry a count instead.
                logger.error(first, exc_info=traceback and first == text)
        self.client.stream_failed()
        self.transport.abortConnection()

    def abort(self):
        """Drop the connection now, abandoning any half-received transaction.

        Used at shutdown.
        """
        self._failed = True
        if self.receiver is not None:
            self.receiver.abort()
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if self._keep_alive is not None and self._keep_alive.running:
            self._keep_alive.stop()
        if self.receiver is not None:
            self.receiver.abort()
            writer = self.client.storage.writer
            if writer.failure is None:
                writer.sync()
            writer.defer_sync = False
        self.client.connection_lost(self, reason)

    @property
    def closed_unheard(self):
        """Did the primary close this link without sending anything?"""
        return self.receiver is not None and not (self._received
                                                  or self._failed)


class ReplicationClient:
    """Keep one storage replicating from one primary (reactor thread).

    `storage` (`zrsd.replica.storage.ReplicaStorage`) gives the resume tid
    (`lastTransaction()`); its `writer` is the sink that applies
    transactions.  `endpoint` is a Twisted client
    endpoint for the primary; `clock` is the reactor (injectable for tests);
    `settings` a `LinkSettings`.
    """

    def __init__(self, name, storage, address, endpoint, clock,
                 settings=LinkSettings(), on_commit=None):
        self.name = name
        self.storage = storage
        self.peer = '%s <- %s' % (name, format_address(address))
        self.endpoint = endpoint
        self.clock = clock
        self.settings = settings
        self.on_commit = on_commit
        self.connection = None
        self.connected = False
        self.backlog = False      # more of the stream waited at the last read
        self.refused = False      # the primary refuses this secondary
        self.refusals = 0         # consecutive closes right after handshake
        self.reconnects = 0
        self.stream_failures = 0
        self.checksum_failures = 0
        self._attempt = 0
        self._connected_at = None
        self._pending = None      # the DelayedCall of the next attempt
        self._connecting = None   # the Deferred of a connection attempt
        self._stopped = True
        self._failures = RepeatLimiter()
        self.apply_errors = RepeatLimiter()

    def start(self):
        self._stopped = False
        self._connect()

    def _connect(self):
        self._pending = None
        if self._stopped:
            return
        d = self._connecting = self.endpoint.connect(
            ProtocolFactory(lambda: SecondaryProtocol(self)))
        d.addErrback(self._connect_failed)

    def _connect_failed(self, failure):
        self._connecting = None
        if self._stopped:
            return
        text = self._failures.check(
            '%s: cannot connect: %s' % (
                self.peer, failure.getErrorMessage()), self.clock.seconds())
        if text is not None:
            logger.warning(text)
        self._schedule_reconnect()

    def _schedule_reconnect(self):
        if self._stopped or self._pending is not None:
            return
        if self.refused:
            # The primary may be fixed (or rewound): ask again, slowly.
            delay = self.settings.max_reconnect_delay
        else:
            delay = backoff_delay(self._attempt,
                                  self.settings.reconnect_delay,
                                  self.settings.max_reconnect_delay)
        self._attempt += 1
        self.reconnects += 1
        logger.debug('%s: reconnecting in %.2fs', self.peer, delay)
        self._pending = self.clock.callLater(delay, self._connect)

    # -- called by SecondaryProtocol ------------------------------------

    def connection_made(self, connection):
        self._connecting = None
        self.connection = connection
        self._connected_at = self.clock.seconds()

    def established(self):
        """The connection is up (TLS: its handshake done)."""
        self.connected = True
        self._failures.reset()

    @property
    def state(self):
        """refused, disconnected, catching_up (more of the stream waited
        at the last read) or streaming (for /status)."""
        if self.refused:
            return 'refused'
        if not self.connected:
            return 'disconnected'
        return 'catching_up' if self.backlog else 'streaming'

    def accepted(self):
        """The primary sent something: it accepts this secondary."""
        self.refusals = 0
        if self.refused:
            self.refused = False
            logger.info('%s: the primary accepts this replica again',
                        self.peer)

    def _closed_unheard(self):
        """The primary closed the link after the handshake without a
        word: count it; REFUSALS in a row mean refused."""
        self.refusals += 1
        if self.refusals < REFUSALS or self.refused:
            logger.info('%s: the primary closed the link right after the '
                        'handshake (%d in a row)', self.peer, self.refusals)
            return
        self.refused = True
        logger.error(
            '%s: refused: the primary closed the link right after the '
            'handshake %d times in a row without sending anything; it '
            'refuses this replica: its last transaction %s is not in the '
            'primary\'s history (a failover or a restore forked the '
            'histories, or it is another database), or its allow-from or '
            'max-secondaries do not admit this replica, or it does not serve '
            'this protocol (%s), or a proxy in between cannot reach it; look '
            'at the primary\'s log.  Nothing is '
            'applied; retrying every %gs', self.peer, self.refusals,
            self.storage.lastTransaction().hex(),
            self.settings.protocol_name.decode(),
            self.settings.max_reconnect_delay)

    def committed(self, tid, nbytes):
        # A connection that delivers transactions is healthy: start the
        # backoff over for the next disconnection.
        self._attempt = 0
        if self.on_commit is not None:
            self.on_commit(tid, nbytes)

    def stream_failed(self):
        self.stream_failures += 1

    def connection_lost(self, connection, reason):
        if connection is not self.connection:
            return
        self.connection = None
        self.connected = self.backlog = False
        if self._stopped:
            return
        if (self._connected_at is not None and self.clock.seconds()
                - self._connected_at >= self.settings.max_reconnect_delay):
            self._attempt = 0
        if is_tls_failure(reason):
            logger.error('%s: TLS handshake with the primary failed: %s',
                         self.peer, reason.getErrorMessage())
        elif connection.closed_unheard and (
                self.clock.seconds() - self._connected_at < REFUSAL_WINDOW):
            self._closed_unheard()
        elif not connection._failed:
            logger.info('%s: disconnected: %s', self.peer,
                        reason.getErrorMessage())
        self._schedule_reconnect()

    def stop(self):
        """Stop replicating: abort any open transaction, drop the link."""
        if self._stopped:
            return
        self._stopped = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self.connection is not None:
            self.connection.abort()
        logger.info('%s: replication stopped', self.peer)


def tcp_endpoint(reactor, address, timeout=30, tls=None):
    """A client endpoint for a (host, port) or unix-socket path address.

    With `tls` (`zrsd.network.tls.ReplicationTLS`), a TLS endpoint.
    """
    if tls is not None:
        host, port = address
        return tls.client_endpoint(reactor, host, port, timeout)
    if isinstance(address, str):
        return endpoints.UNIXClientEndpoint(reactor, address, timeout=timeout)
    host, port = address
    return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
