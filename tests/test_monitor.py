"""The <monitor> endpoint: /metrics (Prometheus) and /status (JSON), read
with a real HTTP client from a real zrsd primary and replica."""
import json
import operator
import os
import re

import yaml

from prometheus_client.parser import text_string_to_metric_families
from ZODB.TimeStamp import TimeStamp

from harness.process import ROOT, http_get, wait_until


def samples(port):
    """Every sample of /metrics."""
    _, content_type, text = http_get(port, '/metrics')
    assert content_type.startswith('text/plain')
    return [sample for family in text_string_to_metric_families(text)
            for sample in family.samples]


def metrics(port):
    """{metric name: value} of storage '1' alone from /metrics."""
    return {sample.name: sample.value for sample in samples(port)
            if sample.labels == {'storage': '1'}}


def labelled(port, name):
    """[(labels, value)] of the metric `name`."""
    return [(sample.labels, sample.value) for sample in samples(port)
            if sample.name == name]


def status(port):
    """/status, parsed."""
    return json.loads(http_get(port, '/status')[2])


def ready(port, query=''):
    """(status code, reasons) of /ready."""
    code, _, text = http_get(port, '/ready' + query)
    return code, json.loads(text)['reasons']


def test_metrics_and_status(node):
    primary = node('primary', monitor=True).start()
    replica = node('replica', upstream=primary.repl_port, monitor=True,
                   zeo_lines='  serve-empty on\n').start()
    for i in range(10):
        last = primary.commit(i, 'x' * 1000)
    reader = replica.client()
    replica.wait_for_tid(last, storage=reader)
    port = replica.monitor_port
    values = wait_until(
        lambda: (v := metrics(port))['zrsd_zeo_clients'] == 1 and v,
        message='the replica reporting its ZEO client')
    stamp = TimeStamp(last).timeTime()
    # The primary's first transaction creates the root: 11 in all; no lag
    # while streaming.
    assert values == dict(
        values, zrsd_replication_connected=1,
        zrsd_transactions_applied_total=11, zrsd_checksum_failures_total=0,
        zrsd_last_transaction_timestamp_seconds=stamp,
        zrsd_replication_lag_seconds=0,
        zrsd_storage_size_bytes=os.path.getsize(replica.fs_path))
    assert values['zrsd_bytes_applied_total'] > 10 * 1000
    assert values['zrsd_last_applied_timestamp_seconds'] >= stamp - 1
    assert labelled(port, 'zrsd_role_info') == [
        ({'storage': '1', 'role': 'replica'}, 1)]
    assert ({'storage': '1', 'zrsd_state': 'streaming'}, 1) in labelled(
        port, 'zrsd_state')
    ((build, one),) = labelled(port, 'zrsd_build_info')
    assert one == 1 and build['version'] and build['zodb']
    assert ready(port) == (200, [])
    primary_values = metrics(primary.monitor_port)
    assert primary_values['zrsd_secondaries_connected'] == 1
    assert 'zrsd_replication_connected' not in primary_values
    # The primary lists its secondary, caught up.
    assert labelled(primary.monitor_port,
                    'zrsd_secondary_behind_transactions') == [
        ({'storage': '1', 'secondary': '127.0.0.1'}, 0)]
    (secondary,) = status(primary.monitor_port)['storages'][0]['secondaries']
    assert secondary == dict(
        secondary, state='streaming', protocol='zrs2.0', tls_peer=None,
        last_sent_tid=last.hex(), transactions_behind=0, bytes_behind=0,
        transactions_sent=11, start_tid='00' * 8)
    _, content_type, text = http_get(port, '/status')
    assert content_type == 'application/json'
    replica_status = json.loads(text)
    assert replica_status['state'] == 'serving'
    (storage,) = replica_status['storages']
    assert storage == dict(
        storage, name='1', role='replica', state='streaming',
        last_transaction=last.hex(), connected=1, transactions_applied=11,
        zeo_clients=1, primary='127.0.0.1:%s' % primary.repl_port)
    # A primary that stops: the replica is disconnected, not ready.
    primary.stop()
    answer = wait_until(lambda: (r := ready(port))[0] == 503 and r,
                        message='/ready saying 503')
    assert answer == (503, ['<zrs 1> is disconnected'])
    assert metrics(port)['zrsd_replication_connected'] == 0
    reader.close()
    replica.stop()


def test_watchable_before_the_first_transaction(node):
    """The monitor of a replica waiting for its first transaction answers;
    /ready says why it is not ready."""
    primary = node('primary').start()
    replica = node('replica', upstream=primary.repl_port,
                   monitor=True).launch()
    replica.wait_for_log('waiting for the first transaction')
    port = replica.monitor_port
    waiting = wait_until(
        lambda: (s := status(port))['storages'][0]['state'] == 'waiting' and s,
        message='/status saying waiting')
    assert waiting['state'] == 'waiting'
    assert ready(port) == (503, ['zrsd is waiting, not serving ZEO yet'])
    assert ({'storage': '1', 'zrsd_state': 'waiting'}, 1) in labelled(
        port, 'zrsd_state')
    primary.commit(1)
    wait_until(lambda: ready(port)[0] == 200, message='ready once serving')
    assert ready(port, '?max-lag=0.000001') == (200, [])   # streaming
    assert ready(port, '?storage=2') == (503, ["no storage named '2'"])
    replica.stop()
    primary.stop()


RULES = os.path.join(ROOT, 'etc', 'zrsd-alerts.yml')
# What the sample rules may use: one series, optional label matchers, a
# comparison with a number (no aggregation: they fire per storage).
RULE = re.compile(r'^(\w+)(?:\{(.*)\})?\s*(==|!=|>=|<=|>|<)\s*([-+.e\d]+)$')
COMPARE = {'==': operator.eq, '!=': operator.ne, '>=': operator.ge,
           '<=': operator.le, '>': operator.gt, '<': operator.lt}


def firing(port):
    """{(alert, storage)} of the sample rules on a node's /metrics now."""
    with open(RULES) as f:
        rules = yaml.safe_load(f)['groups'][0]['rules']
    series = samples(port)
    alerts = set()
    for rule in rules:
        match = RULE.match(' '.join(rule['expr'].split()))
        assert match, 'the test cannot evaluate %r' % rule['expr']
        name, matchers, op, threshold = match.groups()
        assert not matchers
        for sample in series:
            if sample.name == name and COMPARE[op](sample.value,
                                                   float(threshold)):
                alerts.add((rule['alert'], sample.labels['storage']))
    return alerts


def test_sample_alerts(node):
    """etc/zrsd-alerts.yml on real series: quiet while replication works,
    the disconnection alert once the primary is gone."""
    primary = node('primary', monitor=True).start()
    primary.commit(1)
    replica = node('replica', upstream=primary.repl_port,
                   monitor=True).start()
    wait_until(lambda: ready(replica.monitor_port)[0] == 200,
               message='replica ready')
    assert firing(replica.monitor_port) == set()
    assert firing(primary.monitor_port) == set()
    primary.stop()
    wait_until(lambda: firing(replica.monitor_port) == {
        ('ZrsdReplicaDisconnected', '1')},
        message='the disconnection alert firing')
    replica.stop()
