"""zdaemon supervision (`zrsdctl`, `zdaemon -C zdaemon.conf`) of a real zrsd
replica of a closed port, which serves ZEO anyway (serve-empty)."""
import os
import re
import signal
import subprocess
import sys
from contextlib import suppress

import pytest
from ZODB.utils import z64

from harness.process import (BIN, ROOT, Process, free_port, port_open,
                             read_text, run, wait_until)
from harness.zrsd_nodes import ZrsdNode

ZRSDCTL = os.path.join(BIN, 'zrsdctl')
ZDAEMON = os.path.join(BIN, 'zdaemon')
ZRSD = os.path.join(BIN, 'zrsd')
SERVING = ' over ZEO at '


def pid_gone(pid):
    """True once `pid` is no process (or only a zombie)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
    except (FileNotFoundError, ProcessLookupError):
        return True


class Supervised:
    """The zrsd `replica` (its `ZrsdNode`) under a zdaemon manager driven by
    the zdctl-style `command`; `close` kills every pid seen."""

    def __init__(self, command, transcript, replica):
        self.command, self.log_path = command, transcript
        self.replica, self.pids, self._runs = replica, set(), 0

    def ctl(self, *action, status=0):
        """Run the controller with `action`, which must exit with `status`
        (None: any); its output."""
        self._runs += 1
        out = os.path.join(self.replica.directory, 'ctl-%d.out' % self._runs)
        with open(out, 'wb') as f:
            done = subprocess.run(
                self.command + list(action), stdout=f,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=120)
        output = read_text(out)
        self.pids.update(int(pid) for pid in re.findall(
            r'(?m)^(?:manager|application)=(\d+)$', output) if int(pid))
        assert status in (None, done.returncode), output
        return output

    def status(self):
        """(program pid or None, `status -l` output)."""
        output = self.ctl('status', '-l', status=None)
        match = re.search(r'program running; pid=(\d+)', output)
        return (int(match.group(1)) if match else None), output

    def log(self):
        return read_text(self.log_path)

    def wait_serving(self, times):
        """Wait for zrsd's `times`-th start, then read it over ZEO."""
        wait_until(lambda: self.log().count(SERVING) >= times,
                   message='zrsd start #%d in %s' % (times, self.log_path))
        assert self.replica.last_tid() == z64

    def close(self):
        for pid in self.pids:
            with suppress(ProcessLookupError):
                if not pid_gone(pid):
                    os.kill(pid, signal.SIGKILL)


def runner_section(tmp_path, program=None):
    """A <runner> with its socket, transcript and manager log in tmp_path."""
    return ('<runner>\n%s  socket-name %s\n  transcript %s\n'
            '  <eventlog>\n    <logfile>\n      path %s\n    </logfile>\n'
            '  </eventlog>\n</runner>\n') % (
                '  program %s\n' % program if program else '',
                tmp_path / 'zdsock', tmp_path / 'transcript.log',
                tmp_path / 'manager.log')


@pytest.fixture
def zrsd_conf(tmp_path):
    """(config path, the unstarted `ZrsdNode`) of a replica of a primary
    that is down."""
    node = ZrsdNode(tmp_path, 'replica', upstream=free_port(),
                    zeo_lines='  serve-empty on\n')
    return node.write_config(), node


def zdaemon_conf(tmp_path, zrsd_conf_path):
    """(path, transcript) of etc/zdaemon.conf with paths in tmp_path."""
    text = read_text(os.path.join(ROOT, 'etc', 'zdaemon.conf'))
    (tmp_path / 'run').mkdir()
    (tmp_path / 'log').mkdir()
    for sample, local in [('/usr/local/bin/zrsd', ZRSD),
                          ('/etc/zrsd/zrs.conf', zrsd_conf_path),
                          ('/run/zrsd', str(tmp_path / 'run')),
                          ('/var/log/zrsd', str(tmp_path / 'log'))]:
        assert sample in text
        text = text.replace(sample, local)
    (tmp_path / 'zdaemon.conf').write_text(text)
    return str(tmp_path / 'zdaemon.conf'), re.search(
        r'(?m)^\s*transcript\s+(\S+)', text).group(1)


@pytest.mark.parametrize('how', ['zrsdctl', 'module', 'zdaemon'])
def test_lifecycle(tmp_path, zrsd_conf, processes, how):
    """start, status, kill -9 -> restarted, restart, kill USR2, stop."""
    path, replica = zrsd_conf
    manager_log = str(tmp_path / 'manager.log')
    program = 'args=%r' % ([ZRSD, '-C', path],)
    if how == 'zdaemon':
        conf, transcript = zdaemon_conf(tmp_path, path)
        command = [ZDAEMON, '-C', conf]
        manager_log = str(tmp_path / 'log' / 'zdaemon.log')
    else:
        with open(path, 'a') as f:
            f.write(runner_section(tmp_path))
        transcript = str(tmp_path / 'transcript.log')
        command = [ZRSDCTL, '-C', path]
    if how == 'module':
        command = [sys.executable, '-m', 'zrsd.tools.ctl', '-C', path]
        program = "'-m', 'zrsd.daemon.main', '-C', '%s'" % path
    supervised = Supervised(command, transcript, replica)
    processes(supervised)
    assert 'daemon process started, pid=' in supervised.ctl('start')
    pid, output = supervised.status()
    assert pid, output
    assert 'should_be_up=1' in output
    assert program in output
    supervised.wait_serving(1)
    os.kill(pid, signal.SIGKILL)   # a crash: zdaemon starts a new zrsd
    second = wait_until(
        lambda: (new := supervised.status()[0]) not in (None, pid) and new,
        message='zdaemon to restart zrsd after kill -9')
    supervised.wait_serving(2)
    assert pid_gone(pid)
    third = int(re.search(r'daemon process restarted, pid=(\d+)',
                          supervised.ctl('restart')).group(1))
    assert third != second
    supervised.wait_serving(3)
    assert 'stopping (SIGTERM)' in supervised.log()
    assert 'signal SIGUSR2 sent to process %d' % third in supervised.ctl(
        'kill', 'USR2')
    wait_until(lambda: 'log files reopened' in supervised.log(), 60,
               message='zrsd to reopen its logs')
    manager = int(re.search(r'(?m)^manager=(\d+)$',
                            supervised.status()[1]).group(1))
    assert 'daemon process stopped' in supervised.ctl('stop')
    wait_until(lambda: pid_gone(third), 60, message='zrsd to exit')
    wait_until(lambda: pid_gone(manager), 60, message='zdaemon to exit')
    assert not port_open(replica.zeo_port)
    assert 'daemon manager not running' in supervised.ctl('status', status=3)
    # The manager's own log (the transcript may miss zrsd's last lines).
    log = read_text(manager_log)
    assert 'pid %d: terminated by SIGKILL' % pid in log
    assert 'pid %d: exit status 0' % second in log
    assert 'pid %d: exit status 0' % third in log


def test_zrsdctl_fg(tmp_path, zrsd_conf, processes):
    """`zrsdctl fg` runs zrsd in the foreground and returns when it exits."""
    path, replica = zrsd_conf
    pid_file = tmp_path / 'zrsd.pid'
    text = read_text(path).replace(
        '</zeo>', '  pid-filename %s\n</zeo>' % pid_file, 1)
    with open(path, 'w') as f:
        f.write(text + runner_section(tmp_path))
    ctl = Process([ZRSDCTL, '-C', path, 'fg'], str(tmp_path / 'fg.out'))
    processes(ctl)

    def started():
        assert ctl.popen.poll() is None, ctl.log()
        return pid_file.exists() and pid_file.read_text().endswith('\n')
    wait_until(started, 60, message='zrsd pid file')
    pid = int(pid_file.read_text())
    guard = Supervised(None, ctl.log_path, replica)
    guard.pids.add(pid)   # killed at the end if still there
    processes(guard)
    assert replica.last_tid() == z64   # it serves ZEO
    os.kill(pid, signal.SIGTERM)
    assert ctl.popen.wait(60) == 0
    output = ctl.log()
    assert '%s -C %s' % (ZRSD, path) in output   # the command it ran
    assert SERVING in output and 'stopped' in output
    assert not pid_file.exists()


def test_plain_zdaemon_cannot_read_a_zrsd_config(tmp_path, zrsd_conf):
    """Why etc/zdaemon.conf exists: zdaemon's schema has no <zeo>."""
    path, _ = zrsd_conf
    with open(path, 'a') as f:
        f.write(runner_section(tmp_path, program='%s -C %s' % (ZRSD, path)))
    result = run('zdaemon', '-C', path, 'status', status=2)
    assert 'zeo' in result.stderr
