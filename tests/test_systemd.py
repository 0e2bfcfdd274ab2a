"""systemd integration: sd_notify messages of a real zrsd, the watchdog
period, and the shipped unit file etc/zrsd.service.

A test plays systemd's part: it binds a unix datagram socket and passes it
to a real `zrsd` process in NOTIFY_SOCKET, as systemd does for
`Type=notify` services.
"""
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

from harness.process import BIN, ROOT, free_port, port_open
from harness.zrsd_nodes import ZrsdNode
from zrsd.daemon import systemd

ZRSD = os.path.join(BIN, 'zrsd')


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: a bound unix datagram socket.

    `abstract`: bind in the abstract namespace (NOTIFY_SOCKET='@name'),
    otherwise to a file in `directory`.
    """

    def __init__(self, directory, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = 'zrsd-test-%s' % uuid.uuid4().hex
            self.sock.bind('\0' + name)
            self.env_value = '@' + name
        else:
            path = os.path.join(str(directory), 'notify')
            if len(path) > 100:  # sun_path is 108 bytes
                path = os.path.join(tempfile.mkdtemp(), 'notify')
            self.sock.bind(path)
            self.env_value = path
        self.received = []

    def receive(self, timeout=60):
        """The next message (str); fails after `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            message = self.sock.recv(4096).decode('ascii')
        except socket.timeout:
            raise AssertionError('no sd_notify message within %ss (got %r)'
                                 % (timeout, self.received))
        self.received.append(message)
        return message

    def wait_for(self, state, timeout=60):
        """Receive until `state` (e.g. 'READY=1') arrives; skip others."""
        while True:
            message = self.receive(timeout)
            if state in message.split('\n'):
                return message

    def close(self):
        self.sock.close()


@pytest.fixture(params=['path', 'abstract'])
def notify_socket(request, tmp_path):
    sock = NotifySocket(tmp_path, abstract=request.param == 'abstract')
    yield sock
    sock.close()


def start_zrsd(tmp_path, env, processes):
    """A replica of a primary that is down, serving ZEO at once
    (`serve-empty on`), with `env`; launched, not waited for."""
    return ZrsdNode(tmp_path, 'zrsd', upstream=free_port(), env=env,
                    zeo_lines='  serve-empty on\n',
                    register=processes).launch()


def test_ready_and_stopping(tmp_path, notify_socket, processes):
    """READY=1 once the ZEO port listens; STOPPING=1 on SIGTERM; exit 0."""
    proc = start_zrsd(
        tmp_path, {'NOTIFY_SOCKET': notify_socket.env_value}, processes)
    notify_socket.wait_for('READY=1')
    assert port_open(proc.zeo_port), 'READY=1 before the ZEO port listens'
    assert notify_socket.received == ['READY=1']

    proc.signal(signal.SIGTERM)
    notify_socket.wait_for('STOPPING=1')
    # (a second SIGTERM would force exit)
    assert proc.process.popen.wait(60) == 0
    assert notify_socket.received == ['READY=1', 'STOPPING=1']


def test_watchdog_pings_while_serving(tmp_path, processes):
    """With WATCHDOG_USEC set, zrsd sends WATCHDOG=1 regularly once READY.

    (Needs main.py to ping every `systemd.watchdog_interval()` seconds.)
    """
    sock = NotifySocket(tmp_path)
    try:
        # 0.2 s timeout: pings every 0.1 s, so the test is quick.
        proc = start_zrsd(tmp_path, {'NOTIFY_SOCKET': sock.env_value,
                                     'WATCHDOG_USEC': '200000'}, processes)
        sock.wait_for('READY=1')
        for _ in range(3):
            sock.wait_for('WATCHDOG=1', timeout=30)
        assert proc.stop() == 0
    finally:
        sock.close()


def test_no_notify_socket_is_fine(tmp_path, processes):
    """Outside systemd nothing is sent and zrsd runs as usual."""
    proc = start_zrsd(tmp_path, {'NOTIFY_SOCKET': None}, processes)
    proc.wait_for_log(' over ZEO at ')
    assert proc.stop() == 0
    assert 'cannot notify systemd' not in proc.log()


# -- watchdog_interval (the ping period main.py uses) -----------------------

def test_watchdog_interval_is_half_the_timeout():
    assert systemd.watchdog_interval({'WATCHDOG_USEC': '30000000'}) == 15.0
    assert systemd.watchdog_interval({'WATCHDOG_USEC': '200000'}) == 0.1


def test_watchdog_interval_without_watchdog():
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({'WATCHDOG_USEC': ''}) is None


def test_watchdog_interval_honours_watchdog_pid():
    mine = str(os.getpid())
    other = str(os.getpid() + 1)
    assert systemd.watchdog_interval(
        {'WATCHDOG_USEC': '4000000', 'WATCHDOG_PID': mine}) == 2.0
    # Meant for another process (we are a child that inherited the
    # service's environment): do not ping.
    assert systemd.watchdog_interval(
        {'WATCHDOG_USEC': '4000000', 'WATCHDOG_PID': other}) is None


@pytest.mark.parametrize('environ', [
    {'WATCHDOG_USEC': 'soon'},
    {'WATCHDOG_USEC': '0'},
    {'WATCHDOG_USEC': '-5'},
    {'WATCHDOG_USEC': '4000000', 'WATCHDOG_PID': 'me'},
])
def test_watchdog_interval_ignores_bad_values(environ):
    assert systemd.watchdog_interval(environ) is None


def test_notify_sends_one_datagram(tmp_path):
    sock = NotifySocket(tmp_path)
    try:
        assert systemd.notify('WATCHDOG=1', {'NOTIFY_SOCKET': sock.env_value})
        assert sock.receive() == 'WATCHDOG=1'
    finally:
        sock.close()
    assert not systemd.notify('READY=1', {})


# -- etc/zrsd.service -------------------------------------------------------

UNIT = os.path.join(ROOT, 'etc', 'zrsd.service')


def read_unit(path=UNIT):
    """The unit file as {section: {key: value}} (the last of repeated keys)."""
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=('=',),
        comment_prefixes=('#', ';'))
    parser.optionxform = str   # systemd keys are case-sensitive
    parser.read(path)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_unit_essentials():
    unit = read_unit()
    service = unit['Service']
    assert service['Type'] == 'notify'
    command = service['ExecStart'].split()
    assert os.path.isabs(command[0]) and command[0].endswith('/zrsd')
    assert command[1:] == ['-C', '/etc/zrsd/zrs.conf']
    # Reload = reopen the logs (zrsd's SIGUSR2).
    assert service['ExecReload'] == '/bin/kill -USR2 $MAINPID'
    assert service['WatchdogSec'] == '30'
    assert service['Restart'] == 'on-failure'
    assert service['RestartPreventExitStatus'] == '2'   # config error
    assert service['KillSignal'] == 'SIGTERM'
    assert service['TimeoutStopSec']
    assert service['User'] == 'zrsd'
    assert service['StateDirectory'] == 'zrsd'
    assert service['LogsDirectory'] == 'zrsd'
    assert unit['Install']['WantedBy'] == 'multi-user.target'


def test_unit_hardening():
    service = read_unit()['Service']
    for key, value in [('NoNewPrivileges', 'yes'), ('PrivateTmp', 'yes'),
                       ('ProtectSystem', 'strict'), ('ProtectHome', 'yes')]:
        assert service.get(key) == value, key
    # NOTIFY_SOCKET is a unix socket; ZEO and ZRS use TCP.
    assert set(service['RestrictAddressFamilies'].split()) >= {
        'AF_UNIX', 'AF_INET', 'AF_INET6'}


def test_unit_lets_the_sample_config_write_its_files():
    """With ProtectSystem=strict only some directories are writable: those
    the sample etc/zrs.conf writes to (storage, log) must be among them."""
    service = read_unit()['Service']
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
    """systemd itself accepts the unit: no unknown keys or bad values (the
    zrsd script substituted, since verify checks that it exists)."""
    with open(UNIT) as f:
        text = f.read()
    text = text.replace('/usr/local/bin/zrsd', ZRSD)
    path = tmp_path / 'zrsd.service'
    path.write_text(text)
    result = subprocess.run(['systemd-analyze', 'verify', str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert 'zrsd.service' not in result.stderr, result.stderr
