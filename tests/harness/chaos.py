"""`ChaosProxy`, the TCP proxy of replication links: it cuts, stalls,
throttles and gates them.

One thread runs every socket; the public methods hand it their work and
wait, so an action takes effect at once.  `cut(reset)` closes every link
(FIN, or RST); `stall()` stops forwarding until `flow()`; `throttle(rate)`
limits primary -> secondary to `rate` bytes/s.  While `hold_after` is set,
a new link forwards that many bytes to the secondary, then holds (`held`,
the primary's data unread) until `release()`.  `socket_buffer` shrinks the
kernel buffers.  Bytes are never altered or dropped while a link is open.
"""
import concurrent.futures
import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
import time

from zrsd.protocol import FrameDecoder

from .process import wait_until

# Bytes buffered per direction before the proxy stops reading that side
# (back-pressure reaches the sender through TCP).
BUFFER_LIMIT = 256 * 1024
CHUNK = 65536


class _Link:
    """A proxied connection: `down` the secondary's end, `up` the primary's."""

    def __init__(self, down, up, hold_after=None):
        self.down, self.up = down, up
        self.to_up, self.to_down = bytearray(), bytearray()
        self.up_done = False          # the primary half-closed (EOF)
        self.budget = hold_after      # bytes to forward before holding
        self.sent = bytearray()       # the start of what the secondary sent
        self.held, self.closed = threading.Event(), threading.Event()

    def handshake(self):
        """(protocol name, start tid) the secondary sent, or None yet."""
        frames = []
        FrameDecoder(frames.append).feed(self.sent)
        return tuple(frames[:2]) if len(frames) > 1 else None


class ChaosProxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target_port`, with chaos."""

    def __init__(self, target_port, socket_buffer=None, hold_after=None):
        self.target = ('127.0.0.1', target_port)
        self.socket_buffer, self.hold_after = socket_buffer, hold_after
        self.links, self._links = [], []    # every link; the open ones
        self.accepted = self.cuts = self.links_cut = self.bytes_down = 0
        self._stalled = self._stopping = False
        self._rate = None           # bytes/second primary -> secondary
        self._tokens, self._refilled = 0.0, time.monotonic()
        self._commands = queue.Queue()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server(('127.0.0.1', 0), backlog=16)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='chaos-proxy')
        self._thread.start()

    def cut(self, reset=False):
        """Close every open link now; returns how many were cut."""
        return self._call(self._cut, reset)

    def stall(self):
        """Stop forwarding (both directions) until `flow()`."""
        self._call(setattr, self, '_stalled', True)

    def flow(self):
        self._call(setattr, self, '_stalled', False)

    def throttle(self, rate):
        """Limit primary -> secondary to `rate` bytes/s (None: no limit)."""
        self._call(self._set_rate, rate)

    def wait_for_link(self, index, timeout=60.0):
        """The `index`-th accepted link, once its handshake arrived."""
        wait_until(lambda: len(self.links) > index
                   and self.links[index].handshake() is not None,
                   timeout, message='ZRS handshake on proxied connection %d'
                   % index)
        return self.links[index]

    def release(self):
        """Let held links, and later ones, through."""
        self.hold_after = None
        self._call(lambda: [setattr(link, 'budget', None)
                            for link in self.links])

    def open_links(self):
        return self._call(lambda: len(self._links))

    def close(self):
        """Stop the proxy and close every link."""
        if self._thread.is_alive():
            self._call(self._stop)
            self._thread.join(30)

    def _call(self, function, *args):
        """Run `function(*args)` in the proxy thread; return its result."""
        future = concurrent.futures.Future()
        self._commands.put((future, function, args))
        with contextlib.suppress(OSError):
            self._wake_w.send(b'x')
        return future.result(60)

    def _run_commands(self):
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while not self._commands.empty():
            future, function, args = self._commands.get_nowait()
            try:
                future.set_result(function(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def _cut(self, reset):
        links, self._links = self._links, []
        for link in links:
            self._close_link(link, reset)
        self.cuts += 1
        self.links_cut += len(links)
        return len(links)

    def _set_rate(self, rate):
        self._rate, self._tokens, self._refilled = rate, 0.0, time.monotonic()

    def _stop(self):
        self._stopping = True
        for link in self._links:
            self._close_link(link, False)

    def _close_link(self, link, reset):
        if link.closed.is_set():
            return
        link.closed.set()
        link.to_up = link.to_down = bytearray()
        for sock in (link.down, link.up):
            with contextlib.suppress(OSError):
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack('ii', 1, 0))
                else:
                    sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self):
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            up = socket.socket()
            try:
                if self.socket_buffer:
                    # Set before connecting, so that the TCP window stays
                    # small: the primary cannot run far ahead.
                    up.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                  self.socket_buffer)
                    down.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                    self.socket_buffer)
                up.settimeout(5)   # 127.0.0.1: a refused connect fails at once
                up.connect(self.target)
            except OSError:
                up.close()
                down.close()
                continue
            for sock in (down, up):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.accepted += 1
            self.links.append(_Link(down, up, self.hold_after))
            self._links.append(self.links[-1])

    def _refill(self):
        now = time.monotonic()
        if self._rate is not None:      # at most a quarter second of burst
            self._tokens = min(self._rate / 4.0, self._tokens +
                               (now - self._refilled) * self._rate)
        self._refilled = now

    def _register(self):
        """Register every socket; the select timeout (a throttle's refill)."""
        self._selector.close()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        if not self._stopping:
            self._selector.register(self._listener, selectors.EVENT_READ,
                                    'accept')
        timeout = None
        for link in () if self._stalled else self._links:
            down_events = (
                (selectors.EVENT_READ if len(link.to_up) < BUFFER_LIMIT
                 else 0) | (selectors.EVENT_WRITE if link.to_down else 0))
            up_events = selectors.EVENT_WRITE if link.to_up else 0
            # Nothing more to read from a primary that half-closed.
            if not link.up_done and len(link.to_down) < BUFFER_LIMIT:
                if link.budget is not None and link.budget <= 0:
                    if not link.to_down:
                        link.held.set()
                elif self._rate is None or self._tokens >= 1:
                    up_events |= selectors.EVENT_READ
                else:
                    wait = (min(CHUNK, self._rate / 20.0) - self._tokens) \
                        / self._rate
                    timeout = wait if timeout is None else min(timeout, wait)
            if down_events:
                self._selector.register(link.down, down_events,
                                        (link, 'down'))
            if up_events:
                self._selector.register(link.up, up_events, (link, 'up'))
        return timeout

    def _run(self):
        while not self._stopping:
            self._refill()
            timeout = self._register()    # (a new selector)
            for key, mask in self._selector.select(timeout):
                if key.data is None:
                    self._run_commands()
                elif key.data == 'accept':
                    self._accept()
                elif not key.data[0].closed.is_set():
                    self._service(*key.data, mask)
            self._links = [link for link in self._links
                           if not link.closed.is_set()]
        self._selector.close()
        self._listener.close()
        self._run_commands()   # answer whoever asked us to stop

    def _service(self, link, side, mask):
        try:
            if mask & selectors.EVENT_READ:
                self._read(link, side)
            if not link.closed.is_set() and mask & selectors.EVENT_WRITE:
                self._write(link, side)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self._close_link(link, False)

    def _read(self, link, side):
        if side == 'down':
            data = link.down.recv(CHUNK)
            link.to_up += data
            if len(link.sent) < 4096:
                link.sent += data
            if not data:
                # The secondary went away: so does the link.
                with contextlib.suppress(OSError):
                    link.up.send(link.to_up)
                self._close_link(link, False)
            return
        size = CHUNK
        if self._rate is not None:
            size = max(1, min(CHUNK, int(self._tokens)))
        if link.budget is not None:
            size = min(size, link.budget)
        data = link.up.recv(size)
        link.to_down += data
        self.bytes_down += len(data)
        if link.budget is not None:
            link.budget -= len(data)
        if self._rate is not None:
            self._tokens -= len(data)
        if not data:
            # A stopping primary half-closes: forward the rest, then that.
            link.up_done = True
            self._forward_half_close(link)

    def _write(self, link, side):
        sock, pending = ((link.down, link.to_down) if side == 'down'
                         else (link.up, link.to_up))
        del pending[:sock.send(pending)]
        if side == 'down':
            self._forward_half_close(link)

    def _forward_half_close(self, link):
        if link.up_done and not link.to_down:
            with contextlib.suppress(OSError):
                link.down.shutdown(socket.SHUT_WR)
