"""The <monitor> endpoint: /metrics (Prometheus) and /status (JSON), read
with a real HTTP client from a real zrsd primary and replica."""
import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from ZODB.TimeStamp import TimeStamp

from harness import zczrs
from harness.process import wait_until
from harness.zrsd_nodes import ZrsdNode


def get(port, path):
    with urllib.request.urlopen('http://127.0.0.1:%s%s' % (port, path),
                                timeout=10) as response:
        return response.headers['content-type'], response.read().decode()


def metrics(port):
    """{metric name: value} of storage '1' from /metrics."""
    content_type, text = get(port, '/metrics')
    assert content_type.startswith('text/plain')
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.labels['storage'] == '1'}


def test_metrics_and_status(tmp_path, processes):
    primary = ZrsdNode(tmp_path, 'primary', monitor=True,
                       register=processes).start()
    replica = ZrsdNode(tmp_path, 'replica', upstream=primary.repl_port,
                       monitor=True, zeo_lines='  serve-empty on\n',
                       register=processes).start()
    for i in range(10):
        last = zczrs.commit_change(primary.zeo_address, i, 'x' * 1000)
    reader = replica.client()
    wait_until(lambda: reader.lastTransaction() == last,
               message='replica caught up')
    port = replica.monitor_port
    values = wait_until(
        lambda: (lambda v: v if v['zrsd_zeo_clients'] == 1 else None)(
            metrics(port)), message='the replica reporting its ZEO client')
    assert values['zrsd_replication_connected'] == 1
    # The primary's first transaction creates the root; 11 in all.
    assert values['zrsd_transactions_applied_total'] == 11
    assert values['zrsd_bytes_applied_total'] > 10 * 1000
    assert values['zrsd_checksum_failures_total'] == 0
    assert values['zrsd_last_transaction_timestamp_seconds'] == \
        TimeStamp(last).timeTime()
    assert values['zrsd_seconds_since_last_applied'] >= 0
    primary_values = metrics(primary.monitor_port)
    assert primary_values['zrsd_secondaries_connected'] == 1
    assert 'zrsd_replication_connected' not in primary_values
    content_type, text = get(port, '/status')
    assert content_type == 'application/json'
    (storage,) = json.loads(text)['storages']
    assert storage == dict(
        storage, name='1', role='replica', last_transaction=last.hex(),
        connected=1, transactions_applied=11, zeo_clients=1,
        primary='127.0.0.1:%s' % primary.repl_port)
    reader.close()
    replica.stop()
    primary.stop()
