"""systemd's notification protocol (sd_notify), without libsystemd.

With `Type=notify`, systemd passes a datagram socket in NOTIFY_SOCKET; a
service writes ``READY=1`` once it serves and ``STOPPING=1`` when it stops.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""
import logging
import os
import socket
import time

logger = logging.getLogger(__name__)


def notify(state, environ=os.environ):
    """Send `state` (e.g. 'READY=1') to systemd; True if it was sent."""
    address = environ.get('NOTIFY_SOCKET')
    if not address:
        return False
    if address.startswith('@'):  # abstract namespace socket
        address = '\0' + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode('ascii'))
    except OSError as exc:
        logger.warning('cannot notify systemd (%s): %s', state, exc)
        return False
    return True


def watchdog_interval(environ=os.environ):
    """Seconds between ``WATCHDOG=1`` pings systemd expects, or None.

    With `WatchdogSec=` systemd sets WATCHDOG_USEC (the timeout, in
    microseconds) and usually WATCHDOG_PID (the process that must ping).
    The ping period is half the timeout, as sd_watchdog_enabled(3)
    recommends.  None when there is no watchdog, the values are not
    usable, or the watchdog is meant for another process (a child started
    with the service's environment must not ping on behalf of the main
    process).
    """
    usec = environ.get('WATCHDOG_USEC')
    if not usec:
        return None
    pid = environ.get('WATCHDOG_PID')
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            logger.warning('ignoring the systemd watchdog: bad WATCHDOG_PID '
                           '%r', pid)
            return None
    try:
        usec = int(usec)
    except ValueError:
        usec = 0
    if usec <= 0:
        logger.warning('ignoring the systemd watchdog: bad WATCHDOG_USEC %r',
                       environ['WATCHDOG_USEC'])
        return None
    return usec / 2e6


class Watchdog:
    """Send ``WATCHDOG=1`` at most once per `interval` seconds, and only
    while `alive()` (call `ping` as often as convenient)."""

    def __init__(self, interval, alive, clock=time.monotonic):
        self.interval = interval
        self.alive = alive
        self.clock = clock
        self._last = None

    def ping(self):
        now = self.clock()
        if (self._last is None or now - self._last >= self.interval) \
                and self.alive():
            notify('WATCHDOG=1')
            self._last = now
