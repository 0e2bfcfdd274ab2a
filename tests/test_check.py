"""`zrsd-check` side by side with zc.zrs's `zrs-nagios` against ZEO servers
on histories with chosen tids: the same text and the same status."""
import os
import shutil
import socket
import tempfile
import threading

import pytest
from ZEO.StorageServer import StorageServer
from ZODB.FileStorage import FileStorage
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import z64

from harness.history import write_history
from harness.process import free_port, run

ZRSD_CHECK, ZRS_NAGIOS = 'zrsd-check', 'zrs-nagios'
UP_TO_DATE = "Secondary up to date.|'lag'=0.0000seconds\n"


def zeo_server(directory, name, histories, unix=False):
    """A read-only ZEO server (thread) of {storage: [seconds of each tid]};
    (its address, host:port or a unix socket path, the server)."""
    storages = {}
    for storage, seconds in histories.items():   # after 2024-06-01 12:00
        tids = [TimeStamp(2024, 6, 1, 12, 0, float(s)).raw() for s in seconds]
        storages[storage] = FileStorage(write_history(
            os.path.join(directory, '%s-%s.fs' % (name, storage)),
            [(tid, ' ', b'', b'', {}, [(z64, tid, b'root', None)])
             for tid in tids]), read_only=True)
    # sun_path is short: keep the socket out of deep tmp paths.
    addr = (os.path.join(tempfile.mkdtemp(prefix='zrsd-check-'), 'zeo.sock')
            if unix else ('127.0.0.1', 0))
    server = StorageServer(addr, storages, read_only=True)
    server.start_thread()
    return (addr if unix else '127.0.0.1:%d' % server.acceptor.addr[1], server)


@pytest.fixture(scope='module')
def servers(tmp_path_factory):
    """The primaries and secondaries of the comparisons: {name: address}."""
    directory = str(tmp_path_factory.mktemp('check'))
    specs = {
        'primary': {'1': [0, 10]}, 'same': {'1': [0, 10]},
        'behind': {'1': [0, 2.5]},          # 7.5 s behind
        'ahead': {'1': [0, 12]},            # the primary is behind
        'primary2': {'1': [0, 10], 'catalog': [0, 20]},
        'secondary2': {'1': [0, 10], 'catalog': [0, 14]},   # catalog 6 s
        'missing2': {'1': [0, 10], 'other': [0, 10]},
    }
    started = {}
    try:
        for name, histories in specs.items():
            started[name] = zeo_server(directory, name, histories)
        started['same-unix'] = zeo_server(directory, 'same-unix',
                                          specs['same'], unix=True)
        yield {name: address for name, (address, _) in started.items()}
    finally:
        for address, server in started.values():
            server.close()
            if address.startswith('/'):
                shutil.rmtree(os.path.dirname(address))


def check(command, *args, stderr=''):
    """(stdout, status) of a command that writes `stderr` to stderr."""
    result = run(command, *args, status=None, timeout=60)
    assert result.stderr.startswith(stderr), result.stderr
    assert stderr or not result.stderr, result.stderr
    return result.stdout, result.returncode


def both(*args):
    """Run zrsd-check and zrs-nagios, which must agree; (output, status)."""
    ours = check(ZRSD_CHECK, *args)
    assert ours == check(ZRS_NAGIOS, *args)
    return ours


BEHIND = 'Secondary behind primary by 7.5000 seconds'
CATALOG = "Secondary ('catalog') behind primary by 6.0000 seconds > "


@pytest.mark.parametrize('options, primary, secondary, expected, status', [
    (['-m'], 'primary', 'same', UP_TO_DATE, 0),
    (['-w', '5'], 'primary', 'same', 'Secondary up to date.\n', 0),
    (['-w', '10'], 'primary', 'behind', BEHIND + '\n', 0),
    (['-w', '5'], 'primary', 'behind', BEHIND + ' > 5\n', 1),
    (['-w', '5', '-e', '7'], 'primary', 'behind', BEHIND + ' > 7\n', 2),
    (['-w', '5', '-e', '8', '-m'], 'primary', 'behind',
     BEHIND + " > 5|'lag'=7.5000seconds\n", 1),
    (['-e', '10', '-m'], 'primary', 'behind',
     BEHIND + "|'lag'=7.5000seconds\n", 0),
    (['-w', '5'], 'primary', 'ahead', None, 2),
    (['-m'], 'primary', 'ahead', None, 2),
    (['-m', '-w', '5'], 'primary2', 'secondary2',
     UP_TO_DATE + CATALOG + "5| 'lagcatalog'=6.0000seconds\n", 1),
    (['-e', '4'], 'primary2', 'secondary2',
     'Secondary up to date.\n' + CATALOG + '4\n', 2),
    (['-m'], 'primary2', 'missing2',
     UP_TO_DATE + "Storage 'catalog' in primary, but not secondary\n"
     "Storage 'other' in secondary, but not primary\n", 2),
    (['-m'], 'primary', 'same-unix', UP_TO_DATE, 0),
])
def test_same_as_zrs_nagios(servers, options, primary, secondary, expected,
                            status):
    output, code = both(*options, servers[primary], servers[secondary])
    assert code == status
    assert expected in (None, output)


def test_primary_behind_secondary(servers):
    output, code = both('-w', '5', servers['primary'], servers['ahead'])
    assert code == 2
    assert output.startswith('Primary behind secondary by -')
    assert output.endswith(' seconds\n')


def test_unreachable_servers(servers):
    """Either side or both down (zrs-nagios asks the secondary first)."""
    closed, other = ['127.0.0.1:%d' % free_port() for _ in range(2)]
    assert both('-m', servers['primary'], closed) == (
        "Can't connect to secondary at %r: [Errno 111] Connection refused\n"
        % closed, 2)
    output, code = both('-m', closed, servers['same'])
    assert code == 2
    assert output.startswith("Can't connect to primary at %r: " % closed)
    output, code = both('-m', closed, other)
    assert output.startswith("Can't connect to secondary at %r" % other)


@pytest.fixture
def listener():
    """A listening socket nobody serves; (it, its address)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        sock.listen(8)
        yield sock, '127.0.0.1:%d' % sock.getsockname()[1]


def test_silent_server_times_out(listener):
    """A server that never answers is CRITICAL after -t seconds (zrs-nagios
    would wait forever: not compared)."""
    _, silent = listener
    assert check(ZRSD_CHECK, '-t', '0.5', '-m', silent, silent) == (
        "Can't read the status of secondary at %r: timed out\n" % silent, 2)


def test_not_a_zeo_server(listener):
    """A peer that closes at once is CRITICAL with a message."""
    sock, address = listener

    def hang_up():
        # Read the request first: closing with unread data would reset.
        conn, _ = sock.accept()
        assert conn.recv(8, socket.MSG_WAITALL) == b'\x00\x00\x00\x04ruok'
        conn.close()
    closer = threading.Thread(target=hang_up, daemon=True)
    closer.start()
    output = check(ZRSD_CHECK, '-m', '1', address)
    closer.join(30)
    assert output == ("Can't read the status of secondary at %r: "
                      "connection closed by the server\n" % address, 2)


def test_bare_port_is_local_tcp(servers):
    """`PORT` means 127.0.0.1:PORT (a zrs-nagios unix socket name)."""
    port = servers['primary'].rsplit(':', 1)[1]
    assert check(ZRSD_CHECK, '-m', port, servers['same']) == (UP_TO_DATE, 0)


@pytest.mark.parametrize('args', [
    [], ['-m'], ['-m', '127.0.0.1:1'],
    ['-m', '127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'],
    ['127.0.0.1:1', '127.0.0.1:2'],      # no -w, -e or -m
])
def test_usage(args):
    # The same output as zrs-nagios; why, on stderr.
    ours = check(ZRSD_CHECK, *args, stderr='zrsd-check: error: ')
    theirs = check(ZRS_NAGIOS, *args)
    assert ours[1] == theirs[1] == 2
    assert ours[0] == ('Usage: zrsd-check [options] PRIMARY_ADDRESS '
                       'SECONDARY_ADDRESS\n')
    assert theirs[0].startswith('Usage: zrs-nagios [options] PRIMARY_ADDRESS '
                                'SECONDARY_ADDRESS')


def test_bad_option_value():
    result = run(ZRSD_CHECK, '-w', 'soon', '1', '2', status=2, timeout=60)
    assert '-w' in result.stderr


def test_zrsd_replica_of_zczrs_primary(zczrs_primary, node):
    """A real zrsd replica, caught up with a real zc.zrs primary."""
    primary = zczrs_primary
    replica = node('zrsd', upstream=primary.repl_port).start()
    replica.wait_for_tid(primary.last_tid())
    assert both('-m', '-w', '60', primary.zeo_arg,
                replica.zeo_arg) == (UP_TO_DATE, 0)
