"""Prometheus metrics from a `/status` snapshot.

`StatusCollector` turns one snapshot (`zrsd.daemon.main.Daemon.status`)
into metric families, so that `/status` and `/metrics` never disagree.
Names follow the Prometheus conventions: the unit last, `_total` on
counters (prometheus_client appends it), timestamps rather than ages, no
precomputed rates (`rate()` does that), and what describes a storage (its
role, its state, the build) as info or state-set series instead of labels
on every series.  Every series of a storage has the label `storage`; the
series of a secondary add `secondary` (its TLS name or host), a label set
bounded by `max-secondaries`.
"""
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    InfoMetricFamily, StateSetMetricFamily)

from zrsd.version import versions

# The states a storage goes through (see Node.state), for zrsd_state.
STATES = ('opening', 'waiting', 'catching_up', 'streaming', 'disconnected',
          'refused', 'primary', 'stopping')

# (status key, metric name, kind, help), per storage.
STORAGE_METRICS = (
    ('connected', 'zrsd_replication_connected', 'gauge',
     '1 while the replica is connected to its primary'),
    ('refused', 'zrsd_replication_refused', 'gauge',
     '1 while the primary refuses this replica (e.g. a forked history)'),
    ('last_transaction_time', 'zrsd_last_transaction_timestamp_seconds',
     'gauge', 'Commit time of the last transaction in the storage'),
    ('last_applied_time', 'zrsd_last_applied_timestamp_seconds', 'gauge',
     'When this process last applied a replicated transaction'),
    ('lag_seconds', 'zrsd_replication_lag_seconds', 'gauge',
     'How old the data served may be: 0 while streaming, else the age of '
     'the last transaction'),
    ('storage_size_bytes', 'zrsd_storage_size_bytes', 'gauge',
     'Size of the storage file (Data.fs)'),
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
    ('zeo_clients', 'zrsd_zeo_clients', 'gauge',
     'ZEO clients connected to the storage'),
    ('secondaries_connected', 'zrsd_secondaries_connected', 'gauge',
     'ZRS secondaries connected to this storage'),
)

# The same, per connected secondary of a primary or a cascade.
SECONDARY_METRICS = (
    ('streaming', 'zrsd_secondary_streaming', 'gauge',
     '1 once the secondary has received everything there was (streaming), '
     '0 while it catches up'),
    ('transactions_behind', 'zrsd_secondary_behind_transactions', 'gauge',
     'Transactions committed here and not yet sent to the secondary'),
    ('bytes_behind', 'zrsd_secondary_behind_bytes', 'gauge',
     'Bytes of the storage file not yet sent to the secondary'),
    ('last_sent_time', 'zrsd_secondary_last_sent_timestamp_seconds',
     'gauge', 'Commit time of the last transaction sent to the secondary'),
    ('connected_since', 'zrsd_secondary_connected_since_timestamp_seconds',
     'gauge', 'When the secondary connected'),
    ('transactions_sent', 'zrsd_secondary_sent_transactions', 'counter',
     'Transactions sent to the secondary on this connection'),
    ('bytes_sent', 'zrsd_secondary_sent_bytes', 'counter',
     'Bytes sent to the secondary on this connection'),
)


def _family(kind, name, help_text, labels):
    family_type = (GaugeMetricFamily if kind == 'gauge'
                   else CounterMetricFamily)
    return family_type(name, help_text, labels=labels)


def secondary_labels(secondaries):
    """A label value per secondary: its TLS name, else its host; a second
    one of the same name gets '#2', and so on."""
    seen, labels = {}, []
    for secondary in secondaries:
        name = secondary.get('tls_peer') or secondary['address'].rsplit(
            ':', 1)[0].strip('[]')
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else '%s#%d' % (
            name, seen[name]))
    return labels


class StatusCollector:
    """A prometheus_client collector reading a `status()` snapshot."""

    def __init__(self, status):
        self.status = status
        self.build = versions()

    def collect(self):
        snapshot = self.status()
        storages = snapshot['storages']
        build = InfoMetricFamily('zrsd_build', 'zrsd and what it runs on')
        build.add_metric([], self.build)
        yield build
        role = InfoMetricFamily('zrsd_role', 'The role of a storage: '
                                'primary, replica or cascade',
                                labels=['storage'])
        state = StateSetMetricFamily('zrsd_state', 'The state of a storage',
                                     labels=['storage'])
        for storage in storages:
            role.add_metric([storage['name']], {'role': storage['role']})
            state.add_metric([storage['name']], {
                name: storage['state'] == name for name in STATES})
        yield role
        yield state
        for key, name, kind, help_text in STORAGE_METRICS:
            family = _family(kind, name, help_text, ['storage'])
            for storage in storages:
                if storage.get(key) is not None:
                    family.add_metric([storage['name']], float(storage[key]))
            yield family
        for key, name, kind, help_text in SECONDARY_METRICS:
            family = _family(kind, name, help_text, ['storage', 'secondary'])
            for storage in storages:
                secondaries = storage.get('secondaries') or []
                for label, secondary in zip(secondary_labels(secondaries),
                                            secondaries):
                    if secondary.get(key) is not None:
                        family.add_metric([storage['name'], label],
                                          float(secondary[key]))
            yield family
