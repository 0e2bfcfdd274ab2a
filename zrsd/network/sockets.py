"""Socket options and address formatting shared by client and server."""
import array
import fcntl
import os
import re
import socket
import termios

# Dead-peer detection.  The primary never sends keep-alives and may be idle
# for hours, so silence proves nothing; TCP keepalive probes do, and
# TCP_USER_TIMEOUT bounds how long our own keep-alive frames may stay
# unacknowledged.  A secondary scales both with its keep-alive-delay (a
# dead link is noticed within about twice that); these are the defaults.
TCP_KEEPALIVE_IDLE = 60
TCP_KEEPALIVE_INTERVAL = 10
TCP_KEEPALIVE_COUNT = 6
TCP_USER_TIMEOUT_MS = 120_000


def tune_socket(sock, keep_alive_delay=None):
    """Low latency and dead-peer detection for a replication socket; with
    `keep_alive_delay` (seconds between our keep-alive frames), a link
    that stops acknowledging is dropped after about twice that (at least
    4 s)."""
    idle, interval, user_timeout = (TCP_KEEPALIVE_IDLE,
                                    TCP_KEEPALIVE_INTERVAL,
                                    TCP_USER_TIMEOUT_MS)
    if keep_alive_delay:
        idle = max(1, int(keep_alive_delay))
        interval = max(1, min(interval, idle // 2 or 1))
        user_timeout = int(max(4, 2 * keep_alive_delay) * 1000)
    options = [
        (socket.IPPROTO_TCP, 'TCP_NODELAY', 1),
        (socket.SOL_SOCKET, 'SO_KEEPALIVE', 1),
        (socket.IPPROTO_TCP, 'TCP_KEEPIDLE', idle),
        (socket.IPPROTO_TCP, 'TCP_KEEPINTVL', interval),
        (socket.IPPROTO_TCP, 'TCP_KEEPCNT', TCP_KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, 'TCP_USER_TIMEOUT', user_timeout),
    ]
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(level, option, value)


def quick_ack(sock):
    """Ask Linux to acknowledge at once instead of delaying the ACK.

    A zc.zrs primary leaves Nagle on; with our ACKs delayed, a small commit
    can wait ~40 ms for the ACK of the previous one.  The kernel clears the
    flag again by itself, so it is re-armed after every read.
    """
    if _TCP_QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except OSError:
            pass


_TCP_QUICKACK = getattr(socket, 'TCP_QUICKACK', None)


def parse_address(text):
    """(socket family, address) of `host:port`, `[v6]:port`, `port` (on
    127.0.0.1) or a unix socket path, as the command-line tools take
    them."""
    match = re.match(r'\[(\S+)\]:(\d+)$', text)
    if match:
        return socket.AF_INET6, (match.group(1), int(match.group(2)))
    match = re.match(r'(\S+):(\d+)$', text)
    if match:
        return socket.AF_INET, (match.group(1), int(match.group(2)))
    if text.isdigit():
        return socket.AF_INET, ('127.0.0.1', int(text))
    return socket.AF_UNIX, text


class ListenError(Exception):
    """An address to serve at cannot be listened at (in use, say)."""

    def __init__(self, what, where, error):
        super().__init__(what, where, error)
        self.what, self.where, self.error = what, where, error

    def __str__(self):
        errno = getattr(self.error, 'errno', None)
        reason = os.strerror(errno) if errno else str(self.error)
        return 'cannot listen for %s at %s: %s' % (self.what, self.where,
                                                   reason)


def format_address(address):
    if isinstance(address, str):
        return address
    host, port = address
    return '%s:%s' % (host, port)


def tcp_socket(transport):
    """The TCP socket under a Twisted transport (TLS included), or None."""
    for _ in range(3):
        handle = getattr(transport, 'getHandle', lambda: None)()
        if isinstance(handle, socket.socket):
            return handle if handle.family in (
                socket.AF_INET, socket.AF_INET6) else None
        transport = getattr(transport, 'transport', None)
        if transport is None:
            return None
    return None


def is_tls_failure(reason):
    """Did the connection end in a failed TLS handshake or verification?"""
    try:
        from OpenSSL.SSL import Error
    except ImportError:
        return False
    return reason.check(Error) is not None


def pending_bytes(sock):
    """Bytes already received on `sock` but not read yet (0 if unknown)."""
    return _queued(sock, termios.FIONREAD)


def unsent_bytes(sock):
    """Bytes written to `sock` that the peer has not acknowledged yet
    (Linux's TIOCOUTQ; 0 if unknown, or if `sock` is None)."""
    return _queued(sock, termios.TIOCOUTQ) if sock is not None else 0


def _queued(sock, request):
    count = array.array('i', [0])
    try:
        fcntl.ioctl(sock.fileno(), request, count)
    except (OSError, ValueError):
        return 0
    return count[0]
