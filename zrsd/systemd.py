"""systemd's notification protocol (sd_notify), without libsystemd.

With `Type=notify`, systemd passes a datagram socket in NOTIFY_SOCKET; a
service writes ``READY=1`` once it serves and ``STOPPING=1`` when it stops.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""
import logging
import os
import socket

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
