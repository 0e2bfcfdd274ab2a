"""The primary's Twisted server: listen for secondaries (plain TCP, TLS
or a unix socket), let in those `allow-from` allows up to
`max-secondaries`, say who follows (/status), and drain or drop them when
the primary stops.  Each secondary is a
`zrsd.primary.connection.PrimaryProtocol`.

Everything here runs in the reactor thread.
"""
import dataclasses
import ipaddress
import logging

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError

from zrsd.network.factory import ProtocolFactory
from zrsd.network.sockets import ListenError, format_address
from zrsd.primary.connection import PrimaryProtocol
from zrsd.primary.followers import Followers
from zrsd.primary.history import TidIndex
from zrsd.tids import describe_tid

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """Who may follow a primary and how (the `<zrs>` keys of a primary or
    a cascade: see `zrsd.config`); `tls` is a `zrsd.network.tls` context,
    `allowed_networks` `ipaddress` networks (none: everyone)."""
    handshake_timeout: float = 30.0
    tls: object = None
    allowed_networks: tuple = ()
    max_secondaries: int = 100


class PrimaryServer:
    """Serve one storage's transactions to secondaries (reactor thread).

    `storage` is a `zrsd.replica.storage.PrimaryStorage` or `ReplicaStorage` (a
    cascade): it offers `file_storage`, `commits`, `lastTransaction()` and
    `has_blobs`.
    """

    def __init__(self, name, storage, address, reactor,
                 settings=ServerSettings()):
        self.name = name
        self.storage = storage
        self.address = address
        self.reactor = reactor
        self.settings = settings
        self.tid_index = TidIndex()
        self.followers = None   # the caught-up streamers, once started
        self.connections = set()
        self.refusals = {}    # secondary host (or reason) -> RepeatLimiter
        self.port = None

    def start(self):
        self.followers = Followers(self.storage.commits)
        self.followers.start()
        try:
            self._listen(ProtocolFactory(lambda: PrimaryProtocol(self)))
        except CannotListenError as exc:
            raise ListenError(
                'ZRS secondaries (<zrs %s> replicate-to)' % self.name,
                format_address(self.address), exc.socketError) from None

    def _listen(self, factory):
        if isinstance(self.address, str):
            self.port = self.reactor.listenUNIX(self.address, factory)
        elif self.settings.tls is not None:
            host, port = self.address
            self.port = self.reactor.listenSSL(
                port, factory, self.settings.tls.server_options(),
                interface=host)
        else:
            host, port = self.address
            self.port = self.reactor.listenTCP(port, factory, interface=host)
        logger.info('%s: serving ZRS to secondaries at %s%s', self.name,
                    format_address(self.listening_address()),
                    ' (TLS, client certificates required)'
                    if self.settings.tls else '')

    def allows(self, host):
        """Is a secondary at `host` (an IP address) allowed to connect?"""
        if not self.settings.allowed_networks:
            return True
        try:
            address = ipaddress.ip_address(host)
        except (TypeError, ValueError):
            return False
        # On a [::] listener, IPv4 peers arrive as ::ffff:a.b.c.d.
        candidates = [address]
        mapped = getattr(address, 'ipv4_mapped', None)
        if mapped is not None:
            candidates.append(mapped)
        return any(candidate in network for candidate in candidates
                   for network in self.settings.allowed_networks)

    def secondaries(self):
        """Each connected secondary's status (reactor thread)."""
        last_tid = self.storage.lastTransaction()
        _, end = self.storage.committed_file()
        return sorted((connection.status(last_tid, end)
                       for connection in self.connections),
                      key=lambda status: status['connected_since'])

    def listening_address(self):
        if isinstance(self.address, str):
            return self.address
        host = self.port.getHost()
        return host.host, host.port

    def drain(self, timeout):
        """Stop listening; let every connected secondary receive what is
        committed, for up to `timeout` seconds; then drop the ones left
        behind, logging each with its position.  Returns a Deferred.

        The storage's commits must have stopped (see
        `zrsd.replica.storage.PrimaryStorage.stop_commits`).
        """
        self._stop_listening()
        connections = list(self.connections)
        if not connections:
            return defer.succeed(None)
        logger.info('%s: stopping: letting %d secondaries receive the last '
                    'commits (up to %gs)', self.name, len(connections),
                    timeout)
        started = self.reactor.seconds()
        pending = [connection.drain() for connection in connections]

        def left_behind(_):
            last = self.storage.lastTransaction()
            for connection in list(self.connections):
                streamer = connection.streamer
                sent = streamer.last_tid if streamer is not None else None
                logger.warning(
                    '%s: secondary left behind after %gs: last sent %s, the '
                    'last commit here is %s', connection.peer, timeout,
                    describe_tid(sent), last.hex())
                connection.close()

        def done(_):
            if not timer.called:
                timer.cancel()
                logger.info('%s: every secondary received the last commit '
                            '%s (%.2fs)', self.name,
                            self.storage.lastTransaction().hex(),
                            self.reactor.seconds() - started)

        drained = defer.DeferredList(pending)
        timer = task.deferLater(self.reactor, timeout, lambda: None)
        timer.addCallback(left_behind)
        timer.addErrback(lambda failure: failure.trap(defer.CancelledError))
        drained.addCallback(done)
        return defer.DeferredList([drained, timer], fireOnOneCallback=True)

    def _stop_listening(self):
        if self.port is not None:
            self.port.stopListening()
            self.port = None

    def stop(self):
        """Stop listening and drop every secondary; returns the streamers
        (join them outside the reactor thread)."""
        self._stop_listening()
        if self.followers is not None:
            self.followers.stop()
        streamers = []
        for connection in list(self.connections):
            if connection.streamer is not None:
                connection.streamer.stop()
                streamers.append(connection.streamer)
            connection.close()
        return streamers
