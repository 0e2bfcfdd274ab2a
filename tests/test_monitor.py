"""The <monitor> endpoint: /metrics (Prometheus) and /status (JSON), read
with a real HTTP client from a real zrsd primary and replica."""
import json
import os
import urllib.request

import transaction
import ZEO
from prometheus_client.parser import text_string_to_metric_families
from ZODB.TimeStamp import TimeStamp

from support import BIN, Process, free_port, wait_until

CONFIG = '''\
<zeo>
  address 127.0.0.1:%(zeo_port)s
%(zeo_extra)s
</zeo>
<zrs 1>
%(role)s
  reconnect-delay 0.1
  <filestorage>
    path %(path)s
  </filestorage>
</zrs>
<monitor>
  address 127.0.0.1:%(monitor_port)s
</monitor>
<eventlog>
  <logfile>
    path STDOUT
  </logfile>
</eventlog>
'''


def start(tmp_path, name, role, zeo_extra=''):
    ports = dict(zeo_port=free_port(), monitor_port=free_port())
    config = tmp_path / ('%s.conf' % name)
    config.write_text(CONFIG % dict(
        ports, role=role, zeo_extra=zeo_extra,
        path=tmp_path / ('%s.fs' % name)))
    proc = Process([os.path.join(BIN, 'zrsd'), '-C', str(config)],
                   str(tmp_path / ('%s.log' % name)))
    proc.wait_for_log('monitoring at', 60)
    return proc, ports


def get(port, path):
    with urllib.request.urlopen('http://127.0.0.1:%s%s' % (port, path),
                                timeout=10) as response:
        return response.headers['content-type'], response.read().decode()


def metrics(port):
    """{(metric name, storage): value} from /metrics."""
    content_type, text = get(port, '/metrics')
    assert content_type.startswith('text/plain')
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, sample.labels['storage'])] = sample.value
    return values


def test_metrics_and_status(tmp_path):
    repl_port = free_port()
    primary, primary_ports = start(
        tmp_path, 'primary', '  replicate-to 127.0.0.1:%s' % repl_port)
    replica, replica_ports = start(
        tmp_path, 'replica', '  replicate-from 127.0.0.1:%s' % repl_port,
        zeo_extra='  serve-empty on')
    try:
        db = ZEO.DB(('127.0.0.1', primary_ports['zeo_port']))
        conn = db.open()
        for i in range(10):
            conn.root()[i] = 'x' * 1000
            transaction.commit()
        last = db.lastTransaction()
        reader = ZEO.client(('127.0.0.1', replica_ports['zeo_port']),
                            read_only=True)
        wait_until(lambda: reader.lastTransaction() == last,
                   message='replica caught up')

        port = replica_ports['monitor_port']
        values = wait_until(
            lambda: (lambda v: v if v[('zrsd_zeo_clients', '1')] == 1
                     else None)(metrics(port)),
            message='the replica reporting its ZEO client')
        assert values[('zrsd_replication_connected', '1')] == 1
        # The primary's first transaction creates the root; 11 in all.
        assert values[('zrsd_transactions_applied_total', '1')] == 11
        assert values[('zrsd_bytes_applied_total', '1')] > 10 * 1000
        assert values[('zrsd_checksum_failures_total', '1')] == 0
        assert values[('zrsd_last_transaction_timestamp_seconds', '1')] == \
            TimeStamp(last).timeTime()
        assert values[('zrsd_seconds_since_last_applied', '1')] >= 0

        primary_values = metrics(primary_ports['monitor_port'])
        assert primary_values[('zrsd_secondaries_connected', '1')] == 1
        assert ('zrsd_replication_connected', '1') not in primary_values

        content_type, text = get(port, '/status')
        assert content_type == 'application/json'
        status = json.loads(text)
        (storage,) = status['storages']
        assert storage['name'] == '1'
        assert storage['role'] == 'replica'
        assert storage['last_transaction'] == last.hex()
        assert storage['connected'] == 1
        assert storage['transactions_applied'] == 11
        assert storage['zeo_clients'] == 1
        assert storage['primary'] == '127.0.0.1:%s' % repl_port
        reader.close()
        db.close()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]
