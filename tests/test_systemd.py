"""systemd: sd_notify messages of a real zrsd (the test binds NOTIFY_SOCKET
as systemd does), the watchdog period, the unit etc/zrsd.service."""
import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid

import pytest

from harness.process import BIN, ROOT, free_port, port_open, stop_all
from zrsd.daemon import systemd


class NotifySocket(socket.socket):
    """systemd's end of NOTIFY_SOCKET: a unix datagram socket bound in the
    abstract namespace ('@name') or to a file in `directory`."""

    def __init__(self, directory, abstract=False):
        super().__init__(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.env_value = os.path.join(str(directory), 'notify')
        if abstract:
            self.env_value = '@zrsd-test-%s' % uuid.uuid4().hex
        elif len(self.env_value) > 100:  # sun_path is 108 bytes
            self.env_value = os.path.join(tempfile.mkdtemp(), 'notify')
        self.bind('\0' + self.env_value[1:] if abstract else self.env_value)
        self.received = []

    def receive(self, timeout=60):
        """The next message; fails after `timeout` seconds."""
        self.settimeout(timeout)
        try:
            self.received.append(self.recv(4096).decode('ascii'))
        except socket.timeout:
            raise AssertionError('no sd_notify message within %ss (got %r)'
                                 % (timeout, self.received))
        return self.received[-1]

    def wait_for(self, state, timeout=60):
        """Receive until `state` (e.g. 'READY=1') arrives."""
        while state not in self.receive(timeout).split('\n'):
            pass

    def env(self, **more):
        """The environment of a zrsd notifying here, and `more`."""
        return dict(NOTIFY_SOCKET=self.env_value, **more)


@pytest.fixture(params=['path', 'abstract'])
def notify_socket(request, tmp_path):
    with NotifySocket(tmp_path, request.param == 'abstract') as sock:
        yield sock


def start_zrsd(node, env):
    """A launched replica of a closed port, serving ZEO at once, with `env`."""
    return node('zrsd', upstream=free_port(), env=env,
                zeo_lines='  serve-empty on\n').launch()


def test_ready_and_stopping(node, notify_socket):
    """READY=1 once the ZEO port listens; STOPPING=1 on SIGTERM; exit 0."""
    proc = start_zrsd(node, notify_socket.env())
    notify_socket.wait_for('READY=1')
    assert port_open(proc.zeo_port), 'READY=1 before the ZEO port listens'
    assert notify_socket.received == ['READY=1']
    proc.signal(signal.SIGTERM)
    notify_socket.wait_for('STOPPING=1')
    assert proc.wait() == 0
    assert notify_socket.received == ['READY=1', 'STOPPING=1']


def test_an_empty_replica_is_started_while_it_waits(node, notify_socket):
    """A replica waiting for its first transaction is READY=1 (STATUS says
    why), pings the watchdog, and says in STATUS when ZEO serves."""
    primary = node('primary').start()
    replica = node('replica', upstream=primary.repl_port,
                   env=notify_socket.env(WATCHDOG_USEC='200000')).launch()
    notify_socket.wait_for('READY=1')
    assert notify_socket.received[0] == (
        'READY=1\nSTATUS=waiting for the first transaction of 1; ZEO not '
        'serving yet')
    assert not port_open(replica.zeo_port)
    notify_socket.wait_for('WATCHDOG=1')
    primary.db().close()    # the first transaction: the root
    while not notify_socket.receive().startswith('STATUS=serving 1 over '):
        pass
    assert port_open(replica.zeo_port)
    stop_all(replica, primary)


def test_watchdog_pings_while_serving(node, notify_socket):
    """WATCHDOG_USEC 0.2 s: WATCHDOG=1 regularly once READY."""
    proc = start_zrsd(node, notify_socket.env(WATCHDOG_USEC='200000'))
    notify_socket.wait_for('READY=1')
    for _ in range(3):
        notify_socket.wait_for('WATCHDOG=1', timeout=30)
    proc.stop()


def test_no_notify_socket_is_fine(node):
    """Outside systemd nothing is sent and zrsd runs as usual."""
    proc = start_zrsd(node, {'NOTIFY_SOCKET': None})
    proc.wait_for_log(' over ZEO at ')
    proc.stop()
    assert 'cannot notify systemd' not in proc.log()


# (WATCHDOG_USEC, WATCHDOG_PID), those set; the interval: half the timeout,
# or None (PID + 1: another process's, inherited from the service).
@pytest.mark.parametrize('environ, interval', [
    (dict(zip(('WATCHDOG_USEC', 'WATCHDOG_PID'), usec_pid)), interval)
    for usec_pid, interval in [
        (('30000000',), 15.0), (('200000',), 0.1), ((), None), (('',), None),
        (('4000000', str(os.getpid())), 2.0),
        (('4000000', str(os.getpid() + 1)), None), (('soon',), None),
        (('0',), None), (('-5',), None), (('4000000', 'me'), None)]])
def test_watchdog_interval(environ, interval):
    """The ping period main.py uses."""
    assert systemd.watchdog_interval(environ) == interval


def test_notify_sends_one_datagram(notify_socket):
    assert systemd.notify('WATCHDOG=1',
                          {'NOTIFY_SOCKET': notify_socket.env_value})
    assert notify_socket.receive() == 'WATCHDOG=1'
    assert not systemd.notify('READY=1', {})


# -- etc/zrsd.service -------------------------------------------------------

UNIT = os.path.join(ROOT, 'etc', 'zrsd.service')


@pytest.fixture(scope='module')
def unit():
    """The unit file as {section: {key: value}} (the last of repeated
    keys; case-sensitive)."""
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=('=',),
        comment_prefixes=('#', ';'))
    parser.optionxform = str
    parser.read(UNIT)
    return {name: dict(parser[name]) for name in parser.sections()}


# ExecReload: zrsd reopens its logs; RestartPreventExitStatus: a config
# error.
@pytest.mark.parametrize('key, value', [
    ('Type', 'notify'), ('WatchdogSec', '30'), ('Restart', 'on-failure'),
    ('ExecReload', '/bin/kill -USR2 $MAINPID'),
    ('RestartPreventExitStatus', '2'), ('KillSignal', 'SIGTERM'),
    ('User', 'zrsd'), ('StateDirectory', 'zrsd'), ('LogsDirectory', 'zrsd'),
    ('NoNewPrivileges', 'yes'), ('PrivateTmp', 'yes'),
    ('ProtectSystem', 'strict'), ('ProtectHome', 'yes')])
def test_unit_setting(unit, key, value):
    assert unit['Service'].get(key) == value


def test_unit_essentials(unit):
    service = unit['Service']
    command = service['ExecStart'].split()
    assert os.path.isabs(command[0]) and command[0].endswith('/zrsd')
    assert command[1:] == ['-C', '/etc/zrsd/zrs.conf']
    assert service['TimeoutStopSec']
    assert unit['Install']['WantedBy'] == 'multi-user.target'
    # NOTIFY_SOCKET is a unix socket; ZEO and ZRS use TCP.
    assert set(service['RestrictAddressFamilies'].split()) >= {
        'AF_UNIX', 'AF_INET', 'AF_INET6'}


def test_unit_lets_the_sample_config_write_its_files(unit):
    """ProtectSystem=strict leaves writable what etc/zrs.conf writes."""
    service = unit['Service']
    writable = ['/var/lib/' + service['StateDirectory'],
                '/var/log/' + service['LogsDirectory'],
                '/run/' + service.get('RuntimeDirectory', '-')]
    writable += service.get('ReadWritePaths', '').split()
    with open(os.path.join(ROOT, 'etc', 'zrs.conf')) as f:
        paths = re.findall(r'(?m)^\s*(?:#\s*)?(?:path|blob-dir|pid-filename)'
                           r'\s+(/\S+)', f.read())
    assert paths
    for path in paths:
        assert any(path.startswith(d + '/') for d in writable), path


@pytest.mark.skipif(not shutil.which('systemd-analyze'),
                    reason='systemd-analyze is not installed')
def test_unit_verifies(tmp_path):
    """systemd accepts the unit (with a zrsd script that exists)."""
    path = tmp_path / 'zrsd.service'
    with open(UNIT) as f:
        path.write_text(f.read().replace('/usr/local/bin/zrsd',
                                         os.path.join(BIN, 'zrsd')))
    result = subprocess.run(['systemd-analyze', 'verify', str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'zrsd.service' not in result.stderr, result.stderr
