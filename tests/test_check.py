"""`zrsd-check`, the Nagios plugin, side by side with zc.zrs's `zrs-nagios`.

The servers are real ZEO servers (ZEO's StorageServer in a thread of the
test process) on FileStorages whose transactions were committed at chosen
tids, so every lag is known exactly.  Both commands run as processes
against the same servers and must print the same text and exit with the
same status.  One more case checks a real zrsd replica of a zc.zrs primary.
"""
import os
import queue
import socket
import subprocess
import tempfile
import threading

import pytest
from ZEO.StorageServer import StorageServer
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.TimeStamp import TimeStamp
from ZODB.utils import z64

from harness.process import BIN, free_port, wait_until
from harness.zczrs import ZcZrsPrimary, commit_change
from harness.zrsd_nodes import ZrsdNode

ZRSD_CHECK = os.path.join(BIN, 'zrsd-check')
ZRS_NAGIOS = os.path.join(BIN, 'zrs-nagios')


def tid_at(seconds):
    """The tid of 2024-06-01 12:00:00 UTC plus `seconds`."""
    return TimeStamp(2024, 6, 1, 12, 0, float(seconds)).raw()


def write_history(path, seconds):
    """A FileStorage whose transactions have the tids `tid_at(s)`."""
    fs = FileStorage(path, create=True)
    try:
        serial = z64
        for s in seconds:
            tid = tid_at(s)
            txn = TransactionMetaData()
            fs.tpc_begin(txn, tid)
            fs.store(z64, serial, b'root record %r' % s, '', txn)
            fs.tpc_vote(txn)
            fs.tpc_finish(txn)
            serial = tid
        assert fs.lastTransaction() == serial
    finally:
        fs.close()
    return path


class ZEOServer:
    """A ZEO StorageServer (read-only FileStorages) in a thread.

    `histories`: {storage name: [seconds of each transaction]}.  `address`
    is what the check commands get: 'host:port', or a unix socket path.
    """

    def __init__(self, directory, name, histories, unix=False):
        paths = {}
        for storage, seconds in histories.items():
            paths[storage] = write_history(
                os.path.join(directory, '%s-%s.fs' % (name, storage)),
                seconds)
        if unix:
            # sun_path is short: keep the socket out of deep tmp paths.
            self._socket_dir = tempfile.mkdtemp(prefix='zrsd-check-')
            addr = os.path.join(self._socket_dir, 'zeo.sock')
        else:
            self._socket_dir = None
            addr = ('127.0.0.1', 0)
        started = queue.Queue()

        def run():
            try:
                storages = {storage: FileStorage(path, read_only=True)
                            for storage, path in paths.items()}
                server = StorageServer(addr, storages, read_only=True)
            except BaseException as exc:
                started.put(exc)
                raise
            started.put(server)
            server.loop()

        self.thread = threading.Thread(target=run, daemon=True,
                                       name='zeo-%s' % name)
        self.thread.start()
        server = started.get(timeout=60)
        if isinstance(server, BaseException):
            raise server
        self.server = server
        if unix:
            self.address = addr
        else:
            self.address = '127.0.0.1:%d' % server.acceptor.addr[1]

    def close(self):
        self.server.close()
        self.thread.join(30)
        if self._socket_dir:
            for name in os.listdir(self._socket_dir):
                os.remove(os.path.join(self._socket_dir, name))
            os.rmdir(self._socket_dir)


@pytest.fixture(scope='module')
def servers(tmp_path_factory):
    """The primaries and secondaries of the comparisons, by role."""
    directory = str(tmp_path_factory.mktemp('check'))
    specs = {
        # one storage, '1'
        'primary': {'1': [0, 10]},
        'same': {'1': [0, 10]},
        'behind': {'1': [0, 2.5]},          # 7.5 s behind
        'ahead': {'1': [0, 12]},            # the primary is behind
        # several storages
        'primary2': {'1': [0, 10], 'catalog': [0, 20]},
        'secondary2': {'1': [0, 10], 'catalog': [0, 14]},   # catalog 6 s
        'missing2': {'1': [0, 10], 'other': [0, 10]},
    }
    started = {}
    try:
        for name, histories in specs.items():
            started[name] = ZEOServer(directory, name, histories)
        started['same-unix'] = ZEOServer(directory, 'same-unix',
                                         specs['same'], unix=True)
        yield {name: server.address for name, server in started.items()}
    finally:
        for server in started.values():
            server.close()


def run(command, *args):
    result = subprocess.run([command] + list(args), capture_output=True,
                            text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert not result.stderr, result.stderr
    return result.stdout, result.returncode


def both(*args):
    """Run zrsd-check and zrs-nagios; they must agree.  Returns
    (output, status)."""
    ours = run(ZRSD_CHECK, *args)
    theirs = run(ZRS_NAGIOS, *args)
    assert ours == theirs
    return ours


CASES = [
    # (options, primary, secondary, expected output, expected status)
    (['-m'], 'primary', 'same',
     "Secondary up to date.|'lag'=0.0000seconds\n", 0),
    (['-w', '5'], 'primary', 'same', 'Secondary up to date.\n', 0),
    (['-w', '10'], 'primary', 'behind',
     'Secondary behind primary by 7.5000 seconds\n', 0),
    (['-w', '5'], 'primary', 'behind',
     'Secondary behind primary by 7.5000 seconds > 5\n', 1),
    (['-w', '5', '-e', '7'], 'primary', 'behind',
     'Secondary behind primary by 7.5000 seconds > 7\n', 2),
    (['-w', '5', '-e', '8', '-m'], 'primary', 'behind',
     "Secondary behind primary by 7.5000 seconds > 5|'lag'=7.5000seconds\n",
     1),
    (['-e', '10', '-m'], 'primary', 'behind',
     "Secondary behind primary by 7.5000 seconds|'lag'=7.5000seconds\n", 0),
    (['-w', '5'], 'primary', 'ahead', None, 2),
    (['-m'], 'primary', 'ahead', None, 2),
    (['-m', '-w', '5'], 'primary2', 'secondary2',
     "Secondary up to date.|'lag'=0.0000seconds\n"
     "Secondary ('catalog') behind primary by 6.0000 seconds > 5"
     "| 'lagcatalog'=6.0000seconds\n", 1),
    (['-e', '4'], 'primary2', 'secondary2',
     "Secondary up to date.\n"
     "Secondary ('catalog') behind primary by 6.0000 seconds > 4\n", 2),
    (['-m'], 'primary2', 'missing2',
     "Secondary up to date.|'lag'=0.0000seconds\n"
     "Storage 'catalog' in primary, but not secondary\n"
     "Storage 'other' in secondary, but not primary\n", 2),
    (['-m'], 'primary', 'same-unix',
     "Secondary up to date.|'lag'=0.0000seconds\n", 0),
]


@pytest.mark.parametrize('options, primary, secondary, expected, status',
                         CASES)
def test_same_as_zrs_nagios(servers, options, primary, secondary, expected,
                            status):
    output, code = both(*options, servers[primary], servers[secondary])
    assert code == status
    if expected is not None:
        assert output == expected


def test_primary_behind_secondary(servers):
    output, code = both('-w', '5', servers['primary'], servers['ahead'])
    assert code == 2
    assert output.startswith('Primary behind secondary by -')
    assert output.endswith(' seconds\n')


def test_unreachable_servers(servers):
    closed = '127.0.0.1:%d' % free_port()
    output, code = both('-m', servers['primary'], closed)
    assert code == 2
    assert output == ("Can't connect to secondary at %r: "
                      "[Errno 111] Connection refused\n" % closed)
    output, code = both('-m', closed, servers['same'])
    assert code == 2
    assert output.startswith("Can't connect to primary at %r: " % closed)
    # Both down: the secondary is reported (zrs-nagios asks it first).
    other = '127.0.0.1:%d' % free_port()
    output, code = both('-m', closed, other)
    assert output.startswith("Can't connect to secondary at %r" % other)


def test_silent_server_times_out():
    """A server that accepts but never answers is CRITICAL after -t
    seconds (zrs-nagios would wait forever: not compared)."""
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen(8)   # connections complete, nobody answers
        silent = '127.0.0.1:%d' % listener.getsockname()[1]
        output, code = run(ZRSD_CHECK, '-t', '0.5', '-m', silent, silent)
    assert code == 2
    assert output == ("Can't read the status of secondary at %r: "
                      "timed out\n" % silent)


def test_not_a_zeo_server():
    """A peer that closes at once is CRITICAL with a message."""
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen(8)
        address = '127.0.0.1:%d' % listener.getsockname()[1]

        def hang_up():
            conn, _ = listener.accept()
            # Read the request first: closing with unread data would reset
            # the connection instead of closing it.
            request = b''
            while len(request) < 8:
                request += conn.recv(8 - len(request))
            assert request == b'\x00\x00\x00\x04ruok'
            conn.close()
        closer = threading.Thread(target=hang_up, daemon=True)
        closer.start()
        output, code = run(ZRSD_CHECK, '-m', '1', address)
        closer.join(30)
    assert code == 2
    assert output == ("Can't read the status of secondary at %r: "
                      "connection closed by the server\n" % address)


def test_bare_port_is_local_tcp(servers):
    """`PORT` means 127.0.0.1:PORT (a zrs-nagios unix socket name)."""
    port = servers['primary'].rsplit(':', 1)[1]
    output, code = run(ZRSD_CHECK, '-m', port, servers['same'])
    assert (output, code) == ("Secondary up to date.|'lag'=0.0000seconds\n",
                              0)


@pytest.mark.parametrize('args', [
    [],
    ['-m'],
    ['-m', '127.0.0.1:1'],
    ['-m', '127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3'],
    ['127.0.0.1:1', '127.0.0.1:2'],      # no -w, -e or -m
])
def test_usage(args):
    ours = run(ZRSD_CHECK, *args)
    theirs = run(ZRS_NAGIOS, *args)
    assert ours[1] == theirs[1] == 2
    assert ours[0] == ('Usage: zrsd-check [options] PRIMARY_ADDRESS '
                       'SECONDARY_ADDRESS\n')
    assert theirs[0].startswith('Usage: zrs-nagios [options] PRIMARY_ADDRESS '
                                'SECONDARY_ADDRESS')


def test_bad_option_value():
    result = subprocess.run([ZRSD_CHECK, '-w', 'soon', '1', '2'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert '-w' in result.stderr


def test_zrsd_replica_of_zczrs_primary(tmp_path, processes):
    """A real zrsd replica, caught up with a real zc.zrs primary."""
    primary = ZcZrsPrimary(tmp_path / 'primary', register=processes).start()
    last = commit_change(primary.zeo_address, 'x', 1)
    replica = ZrsdNode(tmp_path, 'zrsd', upstream=primary.repl_port,
                       register=processes).start()
    client = replica.client()
    try:
        wait_until(lambda: client.lastTransaction() == last,
                   message='the replica to catch up')
    finally:
        client.close()
    output, code = both('-m', '-w', '60', '127.0.0.1:%d' % primary.zeo_port,
                        '127.0.0.1:%d' % replica.zeo_port)
    assert (output, code) == ("Secondary up to date.|'lag'=0.0000seconds\n",
                              0)
