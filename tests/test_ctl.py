"""zdaemon supervision: `zrsdctl -C zrs.conf` and `zdaemon -C zdaemon.conf`.

Real processes throughout: the controller command, zdaemon's manager it
starts in the background, the zrsd it supervises, and a read-only ZEO
client of that zrsd.  The replica's primary is a closed port: zrsd serves
ZEO anyway and keeps retrying, which is all supervision needs.
"""
import os
import re
import signal
import subprocess
import sys

import pytest
import ZEO
from ZODB.utils import z64

from harness.process import BIN, ROOT, free_port, port_open, wait_until
from harness.zrsd_nodes import ZrsdNode

ZRSDCTL = os.path.join(BIN, 'zrsdctl')
ZDAEMON = os.path.join(BIN, 'zdaemon')
ZRSD = os.path.join(BIN, 'zrsd')

SERVING = ' over ZEO at '


def pid_gone(pid):
    """True once `pid` is no process (or only a zombie)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ('Z', 'X')


class Supervised:
    """A zrsd under a zdaemon manager, driven by a zdctl-style command.

    `command` is the controller's argv prefix (e.g. [zrsdctl, '-C', conf]);
    `transcript` the file the manager copies zrsd's output to.  Every pid
    seen is remembered so `close()` can kill what a failed test left.
    """

    def __init__(self, command, transcript, directory):
        self.command = command
        self.transcript = transcript
        self.directory = directory
        self.log_path = transcript
        self.pids = set()
        self._runs = 0

    def ctl(self, *action):
        """Run the controller with `action`; returns (status, output)."""
        self._runs += 1
        out = os.path.join(self.directory, 'ctl-%d.out' % self._runs)
        with open(out, 'wb') as f:
            status = subprocess.run(
                self.command + list(action), stdout=f,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=120).returncode
        with open(out) as f:
            output = f.read()
        for key in ('manager', 'application'):
            for pid in re.findall(r'(?m)^%s=(\d+)$' % key, output):
                if int(pid):
                    self.pids.add(int(pid))
        return status, output

    def status(self):
        """(program pid or None, `status -l` output)."""
        status, output = self.ctl('status', '-l')
        match = re.search(r'program running; pid=(\d+)', output)
        return (int(match.group(1)) if match else None), output

    def manager_pid(self):
        _, output = self.status()
        match = re.search(r'(?m)^manager=(\d+)$', output)
        return int(match.group(1)) if match else None

    def log(self):
        try:
            with open(self.transcript, 'rb') as f:
                return f.read().decode('utf-8', 'replace')
        except FileNotFoundError:
            return ''

    def wait_serving(self, times):
        """Wait until zrsd said `times` times in all that it serves ZEO."""
        wait_until(lambda: self.log().count(SERVING) >= times, 60,
                   message='zrsd start #%d in %s' % (times, self.transcript))

    def close(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def assert_serves(port):
    """A read-only ZEO client connects and reads the (empty) replica."""
    storage = ZEO.client(('127.0.0.1', port), read_only=True,
                         wait_timeout=60)
    try:
        assert storage.lastTransaction() == z64
    finally:
        storage.close()


def check_lifecycle(supervised, zeo_port, manager_log, program):
    """start, status, serve, kill -9 -> restarted, restart, kill, stop."""
    status, output = supervised.ctl('start')
    assert status == 0, output
    assert 'daemon process started, pid=' in output, output

    pid, output = supervised.status()
    assert pid, output
    assert 'should_be_up=1' in output
    assert 'args=%r' % (program,) in output
    supervised.wait_serving(1)
    assert_serves(zeo_port)

    # A crash: zdaemon starts a new zrsd, which serves again.
    os.kill(pid, signal.SIGKILL)

    def restarted():
        new = supervised.status()[0]
        return new if new not in (None, pid) else None
    second = wait_until(restarted, 60,
                        message='zdaemon to restart zrsd after kill -9')
    supervised.wait_serving(2)
    assert_serves(zeo_port)
    assert pid_gone(pid)

    status, output = supervised.ctl('restart')
    assert status == 0, output
    third = int(re.search(r'daemon process restarted, pid=(\d+)',
                          output).group(1))
    assert third != second
    supervised.wait_serving(3)
    assert_serves(zeo_port)
    assert 'stopping (SIGTERM)' in supervised.log()

    # `kill SIG` signals zrsd: SIGUSR2 reopens its log files.
    status, output = supervised.ctl('kill', 'USR2')
    assert status == 0, output
    assert 'signal SIGUSR2 sent to process %d' % third in output, output
    wait_until(lambda: 'log files reopened' in supervised.log(), 60,
               message='zrsd to reopen its logs')

    manager = supervised.manager_pid()
    assert manager
    status, output = supervised.ctl('stop')
    assert status == 0, output
    assert 'daemon process stopped' in output, output
    wait_until(lambda: pid_gone(third), 60, message='zrsd to exit')
    wait_until(lambda: pid_gone(manager), 60, message='zdaemon to exit')
    assert not port_open(zeo_port)
    status, output = supervised.ctl('status')
    assert status == 3, output
    assert 'daemon manager not running' in output
    # The manager saw the crash, and clean exits for restart and stop.
    # (Its own log file: the transcript may miss zrsd's last lines, as the
    # manager exits without waiting for its copying thread.)
    with open(manager_log) as f:
        log = f.read()
    assert 'pid %d: terminated by SIGKILL' % pid in log
    assert 'pid %d: exit status 0' % second in log
    assert 'pid %d: exit status 0' % third in log


def runner_section(tmp_path, program=None):
    """A <runner> with its socket, transcript and manager log in tmp_path."""
    program_line = '  program %s\n' % program if program else ''
    return ('<runner>\n'
            '%s'
            '  socket-name %s\n'
            '  transcript %s\n'
            '  <eventlog>\n'
            '    <logfile>\n'
            '      path %s\n'
            '    </logfile>\n'
            '  </eventlog>\n'
            '</runner>\n') % (program_line, tmp_path / 'zdsock',
                              tmp_path / 'transcript.log',
                              tmp_path / 'manager.log')


@pytest.fixture
def zrsd_conf(tmp_path):
    """(config path, ZEO port) of a replica of a primary that is down."""
    node = ZrsdNode(tmp_path, 'replica', upstream=free_port(),
                    zeo_lines='  serve-empty on\n')   # serve at once
    return node.write_config(), node.zeo_port


def test_zrsdctl_lifecycle(tmp_path, zrsd_conf, processes):
    """`zrsdctl -C zrs.conf`, with `<runner>` naming no program: zdaemon
    supervises `zrsd -C zrs.conf` (the same file)."""
    path, zeo_port = zrsd_conf
    with open(path, 'a') as f:
        f.write(runner_section(tmp_path))
    supervised = Supervised([ZRSDCTL, '-C', path],
                            str(tmp_path / 'transcript.log'), str(tmp_path))
    processes(supervised)
    check_lifecycle(supervised, zeo_port, str(tmp_path / 'manager.log'),
                    [ZRSD, '-C', path])


def test_zrsdctl_as_module(tmp_path, zrsd_conf, processes):
    """`python -m zrsd.tools.ctl` works too: zdctl then re-executes
    zrsd/tools/ctl.py as a script for its manager, and supervises
    `python -m zrsd.daemon.main`."""
    path, zeo_port = zrsd_conf
    with open(path, 'a') as f:
        f.write(runner_section(tmp_path))
    supervised = Supervised(
        [sys.executable, '-m', 'zrsd.tools.ctl', '-C', path],
        str(tmp_path / 'transcript.log'), str(tmp_path))
    processes(supervised)
    status, output = supervised.ctl('start')
    assert status == 0, output
    pid, output = supervised.status()
    assert pid, output
    assert "'-m', 'zrsd.daemon.main', '-C', '%s'" % path in output
    supervised.wait_serving(1)
    assert_serves(zeo_port)
    status, output = supervised.ctl('stop')
    assert status == 0, output
    wait_until(lambda: pid_gone(pid), 60, message='zrsd to exit')
    assert not port_open(zeo_port)


def test_zrsdctl_fg(tmp_path, zrsd_conf):
    """`zrsdctl fg` runs zrsd in the foreground and returns when it exits."""
    path, zeo_port = zrsd_conf
    pid_file = tmp_path / 'zrsd.pid'
    with open(path) as f:
        text = f.read()
    text = text.replace('</zeo>', '  pid-filename %s\n</zeo>' % pid_file, 1)
    with open(path, 'w') as f:
        f.write(text + runner_section(tmp_path))
    out = tmp_path / 'fg.out'
    with open(out, 'wb') as f:
        ctl = subprocess.Popen([ZRSDCTL, '-C', path, 'fg'], stdout=f,
                               stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    pid = None
    try:
        def started():
            assert ctl.poll() is None, out.read_text()
            return pid_file.exists() and pid_file.read_text().endswith('\n')
        wait_until(started, 60, message='zrsd pid file')
        pid = int(pid_file.read_text())
        assert_serves(zeo_port)
        os.kill(pid, signal.SIGTERM)
        assert ctl.wait(60) == 0
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
        if pid is not None and not pid_gone(pid):
            os.kill(pid, signal.SIGKILL)
    output = out.read_text()
    assert '%s -C %s' % (ZRSD, path) in output   # the command it ran
    assert SERVING in output and 'stopped' in output
    assert not pid_file.exists()


def zdaemon_conf(tmp_path, zrsd_conf_path):
    """etc/zdaemon.conf with its paths moved into tmp_path."""
    with open(os.path.join(ROOT, 'etc', 'zdaemon.conf')) as f:
        text = f.read()
    run = tmp_path / 'run'
    logs = tmp_path / 'log'
    run.mkdir()
    logs.mkdir()
    for sample, local in [('/usr/local/bin/zrsd', ZRSD),
                          ('/etc/zrsd/zrs.conf', zrsd_conf_path),
                          ('/run/zrsd', str(run)),
                          ('/var/log/zrsd', str(logs))]:
        assert sample in text
        text = text.replace(sample, local)
    path = tmp_path / 'zdaemon.conf'
    path.write_text(text)
    transcript = re.search(r'(?m)^\s*transcript\s+(\S+)', text).group(1)
    return str(path), transcript


def test_plain_zdaemon_with_runner_only_config(tmp_path, zrsd_conf,
                                               processes):
    """`zdaemon -C zdaemon.conf` (the shipped sample) supervises zrsd."""
    path, zeo_port = zrsd_conf
    conf, transcript = zdaemon_conf(tmp_path, path)
    supervised = Supervised([ZDAEMON, '-C', conf], transcript, str(tmp_path))
    processes(supervised)
    check_lifecycle(supervised, zeo_port,
                    str(tmp_path / 'log' / 'zdaemon.log'),
                    [ZRSD, '-C', path])


def test_plain_zdaemon_cannot_read_a_zrsd_config(tmp_path, zrsd_conf):
    """Why etc/zdaemon.conf exists: zdaemon's schema has no <zeo>."""
    path, _ = zrsd_conf
    with open(path, 'a') as f:
        f.write(runner_section(tmp_path, program='%s -C %s' % (ZRSD, path)))
    result = subprocess.run([ZDAEMON, '-C', path, 'status'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'zeo' in result.stderr
