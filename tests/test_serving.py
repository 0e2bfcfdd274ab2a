"""When the ZEO port opens: after a replica's first transaction (read-only
clients cannot open a DB on an empty storage), unless `serve-empty`."""
import os
import re
import socket
import subprocess

import pytest
import ZODB

from harness.process import BIN, free_port, port_open, wait_until
from harness.zrsd_nodes import ZrsdNode

SERVING = ' over ZEO at '


def test_replica_serves_after_its_first_transaction(tmp_path, processes):
    primary = ZrsdNode(tmp_path, 'primary', register=processes).launch()
    replica = ZrsdNode(tmp_path, 'replica', upstream=primary.repl_port,
                       register=processes).launch()
    primary.wait_for_log(SERVING)  # a primary serves at once
    replica.wait_for_log('waiting for the first transaction of 1')
    replica.wait_for_log('connected (zrs2.0)')   # to an empty primary
    assert not port_open(replica.zeo_port)
    assert SERVING not in replica.log()
    db = primary.db()  # creates the root
    replica.wait_for_log(SERVING)
    reader = ZODB.DB(replica.client())
    with reader.transaction() as conn:
        assert conn.root() == {}
    reader.close()
    db.close()
    replica.stop()
    primary.stop()


def test_serve_empty_opens_at_once_and_sigterm_while_waiting(tmp_path,
                                                             processes):
    repl_port = free_port()  # nobody listens there
    eager = ZrsdNode(tmp_path, 'eager', upstream=repl_port,
                     zeo_lines='  serve-empty on\n', register=processes)
    waiting = ZrsdNode(tmp_path, 'waiting', upstream=repl_port,
                       register=processes).launch()
    eager.launch().wait_for_log(SERVING)
    client = eager.client()
    assert client.lastTransaction() == b'\0' * 8
    client.close()
    waiting.wait_for_log('waiting for the first transaction')
    waiting.stop()
    eager.stop()
    assert 'stopping (SIGTERM)' in waiting.log()
    assert SERVING not in waiting.log()


@pytest.mark.parametrize('taken, what', [
    ('zeo_port', 'ZEO clients (<zeo> address)'),
    ('repl_port', 'ZRS secondaries (<zrs 1> replicate-to)'),
    ('monitor_port', 'monitoring (<monitor> address)')])
def test_an_address_in_use_is_one_line(tmp_path, processes, taken, what):
    """An address in use stops zrsd with status 1 and one CRITICAL line
    naming what it serves there, the section, the address and why: no
    traceback.  The monitor listens first: its clash stops zrsd before
    anything else listens."""
    node = ZrsdNode(tmp_path, 'primary', register=processes, monitor=True)
    with socket.create_server(('127.0.0.1', getattr(node, taken))):
        node.launch()
        assert node.process.popen.wait(60) == 1
    if taken == 'monitor_port':
        assert 'serving ZRS' not in node.log()
    assert [line.split(' CRITICAL ')[1] for line in node.log().splitlines()
            if ' CRITICAL ' in line] == [
        'zrsd zrsd failed: cannot listen for %s at 127.0.0.1:%d: Address '
        'already in use' % (what, getattr(node, taken))]
    assert 'Traceback' not in node.log()


def test_a_second_zrsd_on_a_storage_is_one_line(tmp_path, processes):
    """A second zrsd on the same storage (the same file: same ports, same
    log) says so in one line on stderr, naming the process that holds it,
    exits 2 (not restarted by systemd or zdaemon) and writes nothing into
    the running one's log."""
    log_path = tmp_path / 'zrsd.log'
    first = ZrsdNode(tmp_path, 'primary', log_file=str(log_path),
                     register=processes).launch()
    wait_until(lambda: port_open(first.zeo_port), message='first serving')
    second = subprocess.run([os.path.join(BIN, 'zrsd'), '-C',
                             first.config_path], capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 2
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


def test_a_zeo_port_as_replicate_from_is_named(tmp_path, processes):
    """A replica pointed at a ZEO port, not a ZRS one, says what it found
    instead of failing to unpickle ZEO's greeting."""
    primary = ZrsdNode(tmp_path, 'primary', register=processes).start()
    replica = ZrsdNode(tmp_path, 'replica', upstream=primary.zeo_port,
                       zeo_lines='  serve-empty on\n',
                       register=processes).start()
    replica.wait_for_log('this looks like a ZEO server (it greets with '
                         "'Z5'), not a ZRS primary: replicate-from must be")
    assert 'Unpickling' not in replica.log()
    assert 'Traceback' not in replica.log()
    replica.stop()
    primary.stop()
