"""Monitoring over HTTP: `/metrics` (Prometheus), `/status` (JSON) and
`/ready` (a readiness check for load balancers and probes).

Served by twisted.web from the reactor thread, so reading the nodes' state
needs no locking.  The monitor listens before the storages open: every
endpoint answers from the first second, with the state of each storage
(`opening` first).  All three read one `status()` snapshot per request
(`zrsd.daemon.main.Daemon.status`), so they never disagree.

`GET /ready` answers 200 when the process serves ZEO and every storage
(or the one named by `?storage=NAME`) is ready: a primary always, a
replica or a cascade when it is connected to its primary, not refused,
holds data, and its lag (`lag_seconds`: 0 while streaming, else the age
of its last transaction) is within `max-lag` (the `<monitor>` key, or
`?max-lag=SECONDS`).  Otherwise 503, with the reasons as JSON.
"""
import json
import logging

from prometheus_client import (CollectorRegistry, ProcessCollector,
                               generate_latest)
from twisted.internet.error import CannotListenError
from twisted.web import resource, server

from zrsd.daemon.metrics import StatusCollector
from zrsd.network.sockets import ListenError, format_address

logger = logging.getLogger(__name__)


def unready_reasons(snapshot, max_lag=None, storage=None):
    """Why the snapshot's process (or its `storage`) is not ready: a list
    of strings, empty when it is."""
    if snapshot['state'] != 'serving':
        return ['zrsd is %s, not serving ZEO yet' % snapshot['state']]
    storages = [s for s in snapshot['storages']
                if storage is None or s['name'] == storage]
    if not storages:
        return ['no storage named %r' % storage]
    reasons = []
    for status in storages:
        label = '<zrs %s>' % status['name']
        state = status['state']
        if state == 'primary':
            continue
        if state in ('disconnected', 'refused', 'waiting'):
            reasons.append('%s is %s%s' % (
                label, state, ' for its first transaction'
                if state == 'waiting' else ''))
        elif max_lag is not None and (status.get('lag_seconds') is None
                                      or status['lag_seconds'] > max_lag):
            reasons.append('%s is %s s behind (max-lag %g)' % (
                label, '%.1f' % status['lag_seconds']
                if status.get('lag_seconds') is not None else 'unknown',
                max_lag))
    return reasons


class _Page(resource.Resource):
    """A leaf answering GET with `render(request)` -> (status code,
    content type, body bytes)."""
    isLeaf = True

    def __init__(self, render):
        super().__init__()
        self.render_page = render

    def render_GET(self, request):
        code, content_type, body = self.render_page(request)
        request.setResponseCode(code)
        request.setHeader(b'content-type', content_type)
        return body


def _json(value):
    return json.dumps(value, indent=2, sort_keys=True).encode()


def _argument(request, name):
    values = request.args.get(name.encode())
    return values[0].decode('utf-8', 'replace') if values else None


class _Site(server.Site):
    noisy = False

    def log(self, request):
        # Scrapes and probes come every few seconds: DEBUG, not INFO.
        logger.debug('%s %s %s %s', request.getClientAddress().host,
                     request.method.decode(), request.uri.decode(),
                     request.code)


def site(status, max_lag=None):
    """A twisted.web Site serving /metrics, /status and /ready from
    `status()`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    registry.register(ProcessCollector(registry=None))

    def metrics(request):
        return (200, b'text/plain; version=0.0.4; charset=utf-8',
                generate_latest(registry))

    def status_page(request):
        return 200, b'application/json', _json(status())

    def ready(request):
        limit = _argument(request, 'max-lag')
        try:
            limit = float(limit) if limit is not None else max_lag
        except ValueError:
            return 400, b'application/json', _json(
                {'ready': False, 'reasons': ['max-lag is not a number']})
        reasons = unready_reasons(status(), limit,
                                  _argument(request, 'storage'))
        return (503 if reasons else 200, b'application/json',
                _json({'ready': not reasons, 'reasons': reasons}))

    root = resource.Resource()
    root.putChild(b'metrics', _Page(metrics))
    root.putChild(b'status', _Page(status_page))
    root.putChild(b'ready', _Page(ready))
    return _Site(root)


def listen(reactor, address, status, max_lag=None):
    """Serve the monitor at `address` ((host, port)); returns the port.
    ListenError when the address is taken."""
    host, port = address
    try:
        listening = reactor.listenTCP(port, site(status, max_lag),
                                      interface=host)
    except CannotListenError as exc:
        raise ListenError('monitoring (<monitor> address)',
                          format_address(address), exc.socketError) from None
    bound = listening.getHost()
    logger.info('monitoring at http://%s/metrics, /status and /ready',
                format_address((bound.host, bound.port)))
    return listening
