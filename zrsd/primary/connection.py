"""One secondary's connection to the primary: check the handshake, start
a `zrsd.primary.streamer.Streamer` (or a `zrsd.primary.seeder.Seeder` for
a file copy) for it, apply back-pressure, drain it when the primary stops,
and say how far it is (/status).

Everything here runs in the reactor thread, except the streamer callbacks:
frames go through the connection's `zrsd.network.outbox.Outbox` (from any
thread), and `_streamer_done` hops over with `callFromThread`.
"""
import enum
import logging

import zope.interface
from twisted.internet import defer, interfaces, protocol
from ZODB.utils import z64

from zrsd import protocol as zrs
from zrsd import seedprotocol as seed
from zrsd.network.outbox import Outbox
from zrsd.network.retry import RepeatLimiter
from zrsd.network.tls import peer_name
from zrsd.network.sockets import (format_address, is_tls_failure,
                                  tcp_socket, tune_socket, unsent_bytes)
from zrsd.primary.history import HistoryMismatch
from zrsd.primary.seeder import PrefixHash, Seeder
from zrsd.primary.streamer import PackedUnderfoot, Source, Streamer
from zrsd.tids import describe_tid, tid_time

logger = logging.getLogger(__name__)

# The handshake frames are 6 and 8 bytes, keep-alives 0.
HANDSHAKE_LIMIT = 64

# Batches (of up to streamer.BATCH bytes) a streamer may have queued for
# the reactor thread: what a secondary that stops reading costs, besides
# the transport's buffer.
IN_FLIGHT = 4


class Phase(enum.Enum):
    PROTOCOL = 'expecting the protocol name'
    TID = 'expecting the start tid'
    SEED_QUERY = 'expecting the file copy query'
    SEED_PROOF = 'expecting the proof of the replica\'s prefix'
    SEEDING = 'copying the file'
    STREAMING = 'streaming'
    DRAINING = 'sending the last commits before closing'
    CLOSED = 'closed'


# The phases in which a streamer or seeder thread sends.
SENDING = (Phase.STREAMING, Phase.DRAINING, Phase.SEEDING)


@zope.interface.implementer(interfaces.IPushProducer)
class _Producer:
    """Lets the transport pause and resume a streamer (back-pressure)."""

    def __init__(self, streamer):
        self.streamer = streamer

    def pauseProducing(self):
        self.streamer.pause()

    def resumeProducing(self):
        self.streamer.resume()

    def stopProducing(self):
        self.streamer.stop()


class PrimaryProtocol(protocol.Protocol):
    """One downstream secondary."""

    phase = Phase.PROTOCOL
    streamer = prefix = outbox = None
    drained = None
    _timeout = None

    def __init__(self, server):
        self.server = server

    def connectionMade(self):
        server = self.server
        sock = tcp_socket(self.transport)
        if sock is not None:
            tune_socket(sock)
        peer = self.transport.getPeer()
        host = self.host = getattr(peer, 'host', None)
        self.address = format_address(
            (host, peer.port) if host is not None else str(peer))
        self.peer = '%s -> %s' % (server.name, self.address)
        self.connected_since = server.reactor.seconds()
        self.frames = zrs.FrameDecoder(self._frame, HANDSHAKE_LIMIT)
        server.connections.add(self)
        if not server.allows(host):
            # A refused replica retries for ever: one ERROR per host every
            # few minutes, INFO in between.
            text = '%s is not in allow-from; closing the connection' % host
            self._log_limited(('allow-from', host), text, text)
            self.close()
            return
        if len(server.connections) > server.settings.max_secondaries:
            self._refuse_over_the_cap()
            return
        self._timeout = server.reactor.callLater(
            server.settings.handshake_timeout, self._handshake_timed_out)
        logger.info('%s: secondary connected', self.peer)

    def status(self, last_tid, end):
        """This secondary for /status, given the storage's last commit and
        the end of its committed file (reactor thread)."""
        streamer = self.streamer
        status = {
            'address': self.address,
            'tls_peer': peer_name(self.transport),
            'protocol': getattr(self, 'protocol_name', b'').decode() or None,
            'state': self.phase.name.lower(),
            'connected_since': self.connected_since,
        }
        if streamer is not None:
            if self.phase is Phase.STREAMING:
                status['state'] = ('streaming' if streamer.caught_up
                                   else 'catching_up')
            status.update(
                streaming=int(status['state'] == 'streaming'),
                start_tid=streamer.start_tid.hex(),
                last_sent_tid=streamer.last_tid.hex(),
                last_sent_time=(tid_time(streamer.last_tid)
                                if streamer.last_tid != z64 else None),
                transactions_sent=streamer.transactions,
                bytes_sent=streamer.bytes,
                transactions_behind=(
                    0 if streamer.last_tid >= last_tid
                    else self.server.storage.commits.commits_after(
                        streamer.last_tid)),
                # What is not sent yet, and what the secondary's kernel has
                # not acknowledged (a dead link fills that first).
                bytes_behind=(max(0, end - streamer.position)
                              + unsent_bytes(tcp_socket(self.transport))
                              if streamer.position is not None else None))
        return status

    def dataReceived(self, data):
        if self.phase is Phase.CLOSED:
            return
        try:
            self.frames.feed(data)
        except zrs.ProtocolError as exc:
            self._refuse(str(exc))

    def _frame(self, payload):
        if self.phase is Phase.PROTOCOL and payload == seed.PROTOCOL_SEED:
            self.protocol_name = payload
            self.phase = Phase.SEED_QUERY
        elif self.phase in (Phase.SEED_QUERY, Phase.SEED_PROOF):
            self._seed_handshake(payload)
        elif self.phase is Phase.PROTOCOL:
            if payload not in zrs.PROTOCOLS:
                raise zrs.ProtocolError('unknown protocol %r' % payload[:20])
            if payload == zrs.PROTOCOL_2_0 and self.server.storage.has_blobs:
                raise zrs.ProtocolError(
                    'secondary speaks zrs2.0, but this storage has blobs: '
                    'the secondary needs a blob-dir (zrs2.1)')
            self.protocol_name = payload
            self.phase = Phase.TID
        elif self.phase is Phase.TID:
            if len(payload) != 8:
                raise zrs.ProtocolError(
                    'start tid of %d bytes, expected 8' % len(payload))
            # The history guard runs in the streamer's thread (it may read
            # the file): see zrsd.primary.history.TidIndex.start_position.
            self._start_streaming(payload)
        elif payload:
            raise zrs.ProtocolError(
                'unexpected %d-byte message after the handshake'
                % len(payload))

    def _seed_handshake(self, payload):
        # zrsd-seed1 (zrsd.seedprotocol): the query, answered at once with
        # the committed length; then the proof, checked by the Seeder.
        try:
            if self.phase is Phase.SEED_QUERY:
                _, (self.seed_length, self.seed_tid) = seed.decode(
                    payload, (b'Q',))
                storage = self.server.storage
                _, end = storage.committed_file()
                self.transport.write(zrs.encode_frame(
                    seed.info(end, storage.has_blobs)))
                self.phase = Phase.SEED_PROOF
                # Hashed here while the replica hashes its own.
                self.prefix = PrefixHash(self._source(), self.seed_length)
            else:
                _, digest = seed.decode(payload, (b'P',))
                self._start_seeding(digest)
        except seed.SeedError as exc:
            raise zrs.ProtocolError(str(exc))

    def _start_seeding(self, digest):
        self._cancel_timeout()
        self.phase = Phase.SEEDING
        prefix, self.prefix = self.prefix, None
        self._start_thread(Seeder, self.seed_length, self.seed_tid, digest,
                           prefix, blobs=self.server.storage.has_blobs)

    def _start_thread(self, kind, *args, blobs, lend=False):
        """Start a Streamer or a Seeder (`kind`) for this secondary; a
        streamer that may `lend` its stream (see
        `zrsd.primary.followers`)."""
        reactor = self.server.reactor
        outbox = self.outbox = Outbox(reactor, self.transport,
                                      self._write_now)
        self.streamer = kind(
            self._source(), *args,
            send=lambda chunks: outbox.send(
                chunks, direct=False, written=self.streamer.written),
            done=lambda error: reactor.callFromThread(
                self._streamer_done, error),
            name=self.peer, blobs=blobs, in_flight=IN_FLIGHT,
            **({'send_now': outbox.send} if lend else {}))
        self.transport.registerProducer(_Producer(self.streamer), True)
        self.streamer.start()

    def _source(self):
        server, storage = self.server, self.server.storage
        return Source(storage.file_storage, storage.commits, server.tid_index,
                      storage.committed_file, server.followers)

    def _start_streaming(self, start_tid):
        self._cancel_timeout()
        self.phase = Phase.STREAMING
        self._start_thread(Streamer, start_tid, lend=True,
                           blobs=self.protocol_name == zrs.PROTOCOL_2_1)

    def _write_now(self, chunks):
        if self.phase in SENDING:
            self.transport.writeSequence(chunks)

    def drain(self):
        """Send everything committed, then close (the primary is stopping
        and its commits have stopped); `drained` fires once the secondary
        has read it all and closed its side."""
        self.drained = defer.Deferred()
        if self.phase is not Phase.STREAMING:
            self.close()
            return self.drained
        self.phase = Phase.DRAINING
        self.streamer.finish()
        return self.drained

    def _end_of_drain(self):
        # Everything is handed to the transport.  Half-close: the
        # secondary reads up to our end of stream, then closes its side,
        # which tells us it has read everything (connectionLost).  TLS
        # cannot half-close: its close_notify follows the data.  The
        # streamer has ended: without unregistering it, a transport that
        # had paused it would resume it instead of closing, and wait.
        self.transport.unregisterProducer()
        if hasattr(self.transport, 'loseWriteConnection'):
            self.transport.loseWriteConnection()
        else:
            self.transport.loseConnection()

    def _streamer_done(self, error):
        if self.phase in (Phase.DRAINING, Phase.SEEDING) and error is None:
            self._end_of_drain()
            return
        if self.phase not in SENDING:
            return
        if isinstance(error, HistoryMismatch):
            self._log_refusal(error)
        elif isinstance(error, PackedUnderfoot):
            logger.info('%s: %s; dropping the connection, the secondary '
                        'resumes from the packed file', self.peer, error)
        elif error is not None:
            logger.error('%s: streaming failed after %s: %s: %s', self.peer,
                         describe_tid(self.streamer.last_tid),
                         type(error).__name__, error,
                         exc_info=(type(error), error, error.__traceback__))
        self.close()

    def _log_refusal(self, error):
        # A refused secondary retries for ever: one ERROR per secondary
        # host and reason every few minutes, INFO lines in between.
        self._log_limited(self.host, (
            'secondary refused, its history is not this storage\'s: %s; a '
            'forked history (failover, restore from a backup) or another '
            'database: nothing is sent, closing the connection (zrsd-rewind '
            'repairs a forked replica)' % error),
            'secondary refused again (%s)' % error)

    def _refuse_over_the_cap(self):
        # Each secondary costs a reader thread and its buffers: a storm of
        # connections must not exhaust the primary.  One ERROR per
        # episode (repeats within a few minutes are INFO).
        text = ('more than max-secondaries (%d) secondaries; refusing this '
                'one; closing the connection'
                % self.server.settings.max_secondaries)
        self._log_limited('max-secondaries', text, text)
        self.close()

    def _log_limited(self, key, text, again):
        """Log `text` as one ERROR per `key` every few minutes, and
        `again` as INFO in between (`RepeatLimiter`)."""
        server = self.server
        limiter = server.refusals.setdefault(key, RepeatLimiter())
        logged = limiter.check(text, server.reactor.seconds())
        if logged is None:
            logger.info('%s: %s', self.peer, again)
        else:
            logger.error('%s: %s', self.peer, logged)

    def _handshake_timed_out(self):
        self._timeout = None
        self._refuse('no handshake within %ss'
                     % self.server.settings.handshake_timeout)

    def _refuse(self, reason):
        logger.error('%s: %s; closing the connection', self.peer, reason)
        self.close()

    def close(self):
        """Drop the connection (also at shutdown)."""
        self.phase = Phase.CLOSED
        self.transport.abortConnection()

    def _cancel_timeout(self):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def connectionLost(self, reason):
        self._cancel_timeout()
        if self.prefix is not None:     # asked, never proved
            self.prefix.close()
        self.phase = Phase.CLOSED
        self.server.connections.discard(self)
        if self.outbox is not None:
            self.outbox.close()
        if self.drained is not None and not self.drained.called:
            self.drained.callback(self)
        if self.streamer is not None:
            self.streamer.stop()
            logger.info('%s: disconnected after %d transactions (%.1f MB), '
                        'last sent %s', self.peer,
                        self.streamer.transactions,
                        self.streamer.bytes / 1e6,
                        self.streamer.last_tid.hex())
        elif is_tls_failure(reason):
            logger.error('%s: TLS handshake failed, secondary refused: %s',
                         self.peer, reason.getErrorMessage())
        else:
            logger.info('%s: disconnected', self.peer)
