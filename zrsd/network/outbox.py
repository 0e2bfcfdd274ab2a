"""A connection's outgoing frames, from any thread, straight to its socket.

Twisted's transports belong to the reactor thread.  Frames from another
thread go through `callFromThread`: a write to the reactor's waker pipe,
an epoll wake-up, the GIL handed from the sending thread to the reactor
thread and back, then the transport buffers the frames, asks epoll for
writability and sends on the next turn.  For a caught-up secondary that is
a dozen system calls and several GIL hand-offs per commit, on the thread
that serves ZEO clients (measured with `strace -c -f` on a primary).

An `Outbox` sends from the calling thread, on its own duplicate of the
connection's socket, whenever nothing of the connection waits in the
transport (`direct=True`); otherwise, on TLS connections, and for bulk
(`direct=False`), it hands the frames to the reactor thread, which writes
them to the transport in order.  Whatever could not be sent at once (the
socket's buffer is full) goes the same way, and later frames follow it
there until the reactor sees the transport empty again.  Frames never
overtake each other: every write of the connection goes through its
outbox.

Threads: `send` from any thread; the rest in the reactor thread.
"""
import os
import socket
import threading

from zrsd import internals

# How soon the reactor first looks whether the transport has sent
# everything it was given (only while frames wait there); each look that
# finds frames still waiting doubles the wait, up to DRAIN_CHECK_MAX (a
# secondary that stops reading costs a look a second, not hundreds).
DRAIN_CHECK = 0.002
DRAIN_CHECK_MAX = 1.0


class Outbox:
    """The outgoing frames of one connection (see the module's text).

    `write(chunks)` is the reactor thread's own way to send (it may drop
    frames once the connection is closing).
    """

    def __init__(self, reactor, transport, write):
        self._reactor = reactor
        self._transport = transport
        self._write = write
        self._lock = threading.Lock()
        self._socket = _plain_socket(transport)
        self._clear = False    # nothing waits in the transport
        self._queued = 0       # frames on their way to the reactor thread
        self._check = None     # the pending drain check
        self._wait = DRAIN_CHECK

    def send(self, chunks, direct=True, written=None):
        """Send a list of bytes (any thread); `written()` is called in the
        reactor thread once they are in the transport (not for frames that
        went straight to the socket)."""
        with self._lock:
            if direct and self._clear:
                data = b''.join(chunks)
                sent = self._send(data)
                if sent == len(data):
                    return
                chunks = [data[sent:]]
            self._clear = False
            self._queued += 1
        self._reactor.callFromThread(self._deliver, chunks, written)

    def _send(self, data):
        try:
            return self._socket.send(data)
        except OSError:
            # The socket's buffer is full (BlockingIOError), or the
            # connection is failing, which the reactor thread finds out on
            # its own side of it: either way the reactor sends the rest.
            return 0

    def close(self):
        """The connection is closed: nothing more goes straight to it."""
        with self._lock:
            self._clear = False
            if self._socket is not None:
                self._socket.close()
                self._socket = None
        if self._check is not None and self._check.active():
            self._check.cancel()

    # -- the reactor thread -----------------------------------------------

    def _deliver(self, chunks, written):
        try:
            self._write(chunks)
        finally:
            with self._lock:
                self._queued -= 1
            if written is not None:
                written()
        self._watch()

    def _watch(self):
        if self._socket is not None and (
                self._check is None or not self._check.active()):
            self._check = self._reactor.callLater(self._wait, self._drained)

    def _drained(self):
        with self._lock:
            if self._socket is None:
                return
            if (self._queued == 0
                    and internals.transport_unsent(self._transport) == 0):
                self._clear = True
                self._wait = DRAIN_CHECK
                return
        self._wait = min(2 * self._wait, DRAIN_CHECK_MAX)
        self._watch()


def _plain_socket(transport):
    """A non-blocking duplicate of a plain TCP transport's socket (None for
    TLS and anything else: those go through the reactor thread)."""
    if not internals.is_plain_tcp(transport):
        return None
    handle = transport.getHandle()
    duplicate = socket.socket(fileno=os.dup(handle.fileno()))
    duplicate.setblocking(False)
    return duplicate
