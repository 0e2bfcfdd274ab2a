"""When the ZEO port opens: after a replica's first transaction (read-only
clients cannot open a DB on an empty storage), unless `serve-empty`."""
import re
import socket
from contextlib import closing

import pytest
import ZODB

from harness.process import free_port, port_open, run, stop_all, wait_until

SERVING = ' over ZEO at '


def test_replica_serves_after_its_first_transaction(node):
    primary = node('primary').launch()
    replica = node('replica', upstream=primary.repl_port).launch()
    primary.wait_for_log(SERVING)  # a primary serves at once
    replica.wait_for_log('waiting for the first transaction of 1')
    replica.wait_for_log('connected (zrs2.0)')   # to an empty primary
    assert not port_open(replica.zeo_port)
    assert SERVING not in replica.log()
    db = primary.db()  # creates the root
    replica.wait_for_log(SERVING)
    with closing(ZODB.DB(replica.client())) as reader, \
            reader.transaction() as conn:
        assert conn.root() == {}
    db.close()
    stop_all(replica, primary)


def test_serve_empty_opens_at_once_and_sigterm_while_waiting(node):
    repl_port = free_port()  # nobody listens there
    eager = node('eager', upstream=repl_port, zeo_lines='  serve-empty on\n')
    waiting = node('waiting', upstream=repl_port).launch()
    eager.launch().wait_for_log(SERVING)
    assert eager.last_tid() == b'\0' * 8
    waiting.wait_for_log('waiting for the first transaction')
    waiting.stop()
    eager.stop()
    assert 'stopping (SIGTERM)' in waiting.log()
    assert SERVING not in waiting.log()


@pytest.mark.parametrize('taken, what', [
    ('zeo_port', 'ZEO clients (<zeo> address)'),
    ('repl_port', 'ZRS secondaries (<zrs 1> replicate-to)'),
    ('monitor_port', 'monitoring (<monitor> address)')])
def test_an_address_in_use_is_one_line(node, taken, what):
    """An address in use: exit 1 and one CRITICAL line naming what, where
    and why, no traceback; the monitor, listening first, stops all else."""
    zrsd = node('primary', monitor=True)
    with socket.create_server(('127.0.0.1', getattr(zrsd, taken))):
        assert zrsd.launch().wait() == 1
    if taken == 'monitor_port':
        assert 'serving ZRS' not in zrsd.log()
    assert [line.split(' CRITICAL ')[1] for line in zrsd.log().splitlines()
            if ' CRITICAL ' in line] == [
        'zrsd zrsd failed: cannot listen for %s at 127.0.0.1:%d: Address '
        'already in use' % (what, getattr(zrsd, taken))]
    assert 'Traceback' not in zrsd.log()


def test_a_second_zrsd_on_a_storage_is_one_line(node, tmp_path):
    """A second zrsd on the same storage (and ports and log) says so in one
    line on stderr naming the holder, exits 2, logs nothing."""
    log_path = tmp_path / 'zrsd.log'
    first = node('primary', log_file=str(log_path)).launch()
    wait_until(lambda: port_open(first.zeo_port), message='first serving')
    second = run('zrsd', '-C', first.config_path, status=2)
    (line,) = second.stderr.splitlines()
    assert re.fullmatch(
        r'zrsd: %s is in use by another process \(pid %d: .*zrsd -C %s\); '
        r'a storage is served by one process only' % (re.escape(
            first.fs_path), first.pid, re.escape(first.config_path)), line)
    log = log_path.read_text()
    assert 'CRITICAL' not in log and 'Traceback' not in log
    assert 'in use by another process' not in log
    assert log.count('primary of ') == log.count('serving 1 over ZEO') == 1
    first.stop()


def test_a_zeo_port_as_replicate_from_is_named(node):
    """A replica pointed at a ZEO port says so (no unpickling error)."""
    primary = node('primary').start()
    replica = node('replica', upstream=primary.zeo_port,
                   zeo_lines='  serve-empty on\n').start()
    replica.wait_for_log('this looks like a ZEO server (it greets with '
                         "'Z5'), not a ZRS primary: replicate-from must be")
    assert 'Unpickling' not in replica.log()
    assert 'Traceback' not in replica.log()
    stop_all(replica, primary)
