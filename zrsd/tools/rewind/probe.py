"""Asking the primary over ZRS, for `zrsd-rewind`: is the replica's
transaction k the primary's?

`Primary` is a blocking ZRS client (a plain socket, TLS when the section
has `<ssl>`) that asks for the transactions after the replica's
transaction k-1 and feeds the first one, through
`zrsd.replica.receiver.Receiver`, to a `ProbeSink` that compares it record by
record with the replica's transaction k.  `shared_prefix` binary-searches
the replica's transactions for the last one the primary shares (the
package's docstring says how a probe decides).
"""
import hashlib
import socket
import ssl

from ZODB.utils import z64

from zrsd import protocol
from zrsd.replica.receiver import Receiver
from zrsd.network import blocking
from zrsd.network.sockets import format_address
from zrsd.tids import format_tid
from ..verify.history import compare_metadata, compare_record, format_oid
from ..verify.sides import Transaction
from .replica import RewindError, error_text

READ_SIZE = 1 << 20


class _BlobDigest:
    """Where `Receiver` writes a blob's content: only its sha256 is kept."""

    name = '<blob digest>'

    def __init__(self):
        self._sha256 = hashlib.sha256()

    def write(self, data):
        self._sha256.update(data)

    def close(self):
        pass

    def digest(self):
        return self._sha256.digest()


class ProbeSink:
    """A `zrsd.replica.receiver.Receiver` sink comparing the primary's first
    transaction with the replica's transaction k, record by record as it
    arrives (nothing is kept but the first difference).

    After `commit`, `done` is true and `difference` is None (shared) or
    says what differs.
    """

    def __init__(self, replica, k):
        self.replica = replica
        self._transactions = replica.iterator(k, replica.tids[k])
        self.expected = next(self._transactions)
        self.done = False
        self.difference = None
        self._records = None    # the replica's records, while comparing
        self._index = 0

    def begin(self, tid, status, user, description, extension):
        expected = self.expected
        primary = protocol.Begin(tid, status, user, description, extension)
        if tid == expected.tid:
            if status == 'p' or expected.status == 'p':
                # A packed copy on either side: its records were rewritten,
                # its metadata kept.
                self.difference = compare_metadata(
                    _packed(primary), _packed(Transaction(expected)))
            else:
                self.difference = compare_metadata(
                    primary, Transaction(expected))
                self._records = iter(expected)
        elif tid > expected.tid and status == 'p':
            pass  # the replica's transaction was packed away on the primary
        elif tid < expected.tid and expected.status == 'p':
            pass  # the primary's transaction was packed away on the replica
        else:
            self.difference = 'the primary\'s next transaction is %s' % (
                format_tid(tid))

    def store(self, oid, tid, data, data_txn):
        self._compare((oid, tid, data, data_txn))

    def open_blob(self):
        return _BlobDigest()

    def store_blob(self, oid, tid, data, data_txn, blob_file):
        index = self._index
        if self._compare((oid, tid, data, data_txn)) and \
                self.replica.blob_digest(oid, tid) != blob_file.digest():
            self.difference = 'record %d: oid %s: blob file differs or is ' \
                'missing on the replica' % (index, format_oid(oid))

    def _compare(self, record):
        """Compare the primary's next record; True while they agree."""
        if self._records is None or self.difference:
            return False
        theirs = next(self._records, None)
        what = compare_record(record, None if theirs is None else (
            theirs.oid, theirs.tid, theirs.data, theirs.data_txn))
        if what:
            self.difference = 'record %d: %s' % (self._index, what)
        self._index += 1
        return not what

    def commit(self):
        if self._records is not None and not self.difference:
            extra = next(self._records, None)
            if extra is not None:
                self.difference = 'record %d: oid %s on the replica only' % (
                    self._index, format_oid(extra.oid))
        self.done = True

    def abort(self):
        pass

    def close(self):
        self._transactions.close()


class _packed:
    """The metadata a pack keeps: user, description, extension."""

    status = 'p'

    def __init__(self, txn):
        self.user = txn.user
        self.description = txn.description
        self.extension = dict(txn.extension or {})


class Primary:
    """The primary at `replicate-from`, asked through the ZRS protocol."""

    def __init__(self, zrs, blobs, timeout):
        self.zrs = zrs
        self.address = zrs.replicate_from
        self.where = format_address(self.address)
        self.protocol_name = (protocol.PROTOCOL_2_1 if blobs
                              else protocol.PROTOCOL_2_0)
        self.timeout = timeout
        self.tls = (client_tls_context(zrs.section.ssl)
                    if zrs.section.ssl is not None else None)

    def connect(self):
        """A connected (TLS) socket, with the timeout set."""
        try:
            return blocking.connect(self.address, self.timeout,
                                    self.zrs.section.ssl, self.tls)
        except ssl.SSLError as exc:
            raise RewindError('TLS with the primary at %s failed: %s' % (
                self.where, error_text(exc)))
        except OSError as exc:
            raise RewindError('cannot reach the primary at %s: %s' % (
                self.where, error_text(exc)))

    def probe(self, replica, k):
        """(shared(k), why not) for position `k` of the replica."""
        start = z64 if k == 0 else replica.tids[k - 1]
        sock = self.connect()
        sink = ProbeSink(replica, k)
        receiver = Receiver(sink, start, decoder=self.zrs.decoder())

        def frame_received(payload):
            if not sink.done:
                receiver.frame_received(payload)

        frames = protocol.FrameDecoder(
            frame_received, self.zrs.section.max_message_size)
        received = False
        try:
            sock.sendall(protocol.encode_frame(self.protocol_name)
                         + protocol.encode_frame(start))
            while not sink.done:
                data = self._receive(sock, received)
                if data is None:
                    return False, 'the primary sent nothing after %s for ' \
                        '%gs: it has no later transaction' % (
                            _after(start), self.timeout)
                if not data:
                    if received:
                        raise RewindError(
                            'the primary at %s closed the connection in the '
                            'middle of a transaction' % self.where)
                    return False, 'the primary refused to stream after %s ' \
                        '(closed the connection): not in its history' % (
                            _after(start))
                received = True
                frames.feed(data)
        except protocol.ProtocolError as exc:
            raise RewindError('bad stream from the primary at %s: %s' % (
                self.where, exc))
        except OSError as exc:
            raise RewindError('reading from the primary at %s failed: %s' % (
                self.where, error_text(exc)))
        finally:
            sock.close()
            sink.close()
        return sink.difference is None, sink.difference

    def _receive(self, sock, received):
        """Data; b'' when closed; None after `timeout` of silence."""
        try:
            return sock.recv(READ_SIZE)
        except (socket.timeout, TimeoutError):
            if received:
                raise RewindError(
                    'the primary at %s stopped sending in the middle of a '
                    'transaction (%gs)' % (self.where, self.timeout))
            return None
        except ConnectionResetError:
            return b''  # an aborted connection: refused


def _after(start):
    return 'the beginning' if start == z64 else start.hex()


def client_tls_context(settings):
    """`blocking.client_tls_context`, its failure a RewindError."""
    try:
        return blocking.client_tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        raise RewindError('<ssl>: cannot load the certificates: %s'
                          % error_text(exc))


def shared_prefix(primary, replica):
    """(m, why): the replica's first m transactions are the primary's;
    `why` says how transaction m differs (None when m is all of them)."""
    n = len(replica.tids)
    probes = {}

    def shared(k):
        probes[k] = primary.probe(replica, k)
        return probes[k][0]

    if shared(n - 1):
        return n, None
    low, high = 0, n - 1   # shared(low - 1) (or low = 0), not shared(high)
    while low < high:
        middle = (low + high) // 2
        if shared(middle):
            low = middle + 1
        else:
            high = middle
    why = probes[low][1]
    if low > 0 and why.startswith('the primary refused'):
        # Transaction low-1 is shared, so the primary holds the start tid
        # of this probe: its refusal was not the history guard.
        raise RewindError('the primary at %s closed the connection for a '
                          'start tid it holds (%s): see its log' % (
                              primary.where, replica.tids[low - 1].hex()))
    return low, why
