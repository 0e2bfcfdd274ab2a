"""Monitoring over HTTP: `/metrics` (Prometheus) and `/status` (JSON).

Served by twisted.web from the reactor thread, so reading the nodes' state
needs no locking.  Metrics are produced with prometheus_client from one
status snapshot per request (`status()` is the single source for both).
"""
import json
import logging

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.web import resource, server

logger = logging.getLogger(__name__)

# (status key, metric name, kind, help); kind is 'gauge' or 'counter'.
METRICS = (
    ('connected', 'zrsd_replication_connected', 'gauge',
     '1 while the replica is connected to its primary'),
    ('refused', 'zrsd_replication_refused', 'gauge',
     '1 while the primary refuses this replica (e.g. a forked history)'),
    ('last_transaction_time', 'zrsd_last_transaction_timestamp_seconds',
     'gauge', 'Commit time of the last transaction in the storage'),
    ('seconds_since_last_applied', 'zrsd_seconds_since_last_applied',
     'gauge', 'Seconds since the replica last applied a transaction'),
    ('transactions_applied', 'zrsd_transactions_applied', 'counter',
     'Transactions replicated into the storage since start'),
    ('bytes_applied', 'zrsd_bytes_applied', 'counter',
     'Bytes of replication stream applied since start'),
    ('reconnects', 'zrsd_reconnects', 'counter',
     'Reconnection attempts to the primary'),
    ('checksum_failures', 'zrsd_checksum_failures', 'counter',
     'Transactions rejected for a bad stream checksum'),
    ('stream_failures', 'zrsd_stream_failures', 'counter',
     'Connections dropped for a bad stream or a failed apply'),
    ('rate', 'zrsd_catchup_rate_transactions_per_second', 'gauge',
     'Transactions applied per second over the last progress interval'),
    ('zeo_clients', 'zrsd_zeo_clients', 'gauge',
     'ZEO clients connected to the storage'),
    ('secondaries', 'zrsd_secondaries_connected', 'gauge',
     'ZRS secondaries connected to this storage'),
)


class StatusCollector:
    """A prometheus_client collector reading a `status()` snapshot."""

    def __init__(self, status):
        self.status = status

    def collect(self):
        snapshot = self.status()
        for key, name, kind, help_text in METRICS:
            family_type = (GaugeMetricFamily if kind == 'gauge'
                           else CounterMetricFamily)
            family = family_type(name, help_text, labels=['storage', 'role'])
            for storage in snapshot['storages']:
                value = storage.get(key)
                if value is not None:
                    family.add_metric([storage['name'], storage['role']],
                                      float(value))
            yield family


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request):
        request.setHeader(b'content-type',
                          b'text/plain; version=0.0.4; charset=utf-8')
        return generate_latest(self.registry)


class _Status(resource.Resource):
    isLeaf = True

    def __init__(self, status):
        super().__init__()
        self.status = status

    def render_GET(self, request):
        request.setHeader(b'content-type', b'application/json')
        return json.dumps(self.status(), indent=2, sort_keys=True).encode()


def site(status):
    """A twisted.web Site serving /metrics and /status from `status()`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    root = resource.Resource()
    root.putChild(b'metrics', _Metrics(registry))
    root.putChild(b'status', _Status(status))
    web = server.Site(root)
    web.noisy = False
    return web


def listen(reactor, address, status):
    """Serve the monitor at `address` ((host, port)); returns the port."""
    host, port = address
    listening = reactor.listenTCP(port, site(status), interface=host)
    bound = listening.getHost()
    logger.info('monitoring at http://%s:%s/metrics and /status',
                bound.host, bound.port)
    return listening
