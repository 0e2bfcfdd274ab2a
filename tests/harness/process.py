"""Ports, polling, commands, child processes, their logs (`LogTail`,
`captured_logs`), the configs (`config_text`, `zeo_config`) and `Node`,
the base of every node."""
import collections
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import ZEO

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s %(message)s'
# A line of LOG_FORMAT (ZConfig's time or logging's): level, logger, text.
LOG_LINE = re.compile(r'^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:,\d+)? '
                      r'([A-Z]+) (\S+) ?(.*)$')
PORT = re.compile(r'-> 127\.0\.0\.1:(\d+): ')   # a zrsd connection's


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=60.0, interval=0.05, message=None):
    """Poll `predicate` until it returns a true value (returned); raise
    AssertionError naming `message` once `timeout` passed."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %ss waiting for %s' % (
                timeout, message or predicate))
        time.sleep(interval)
    return value


def read_text(path):
    """A file's text (bad bytes replaced), or '' while it is missing."""
    try:
        with open(path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')
    except FileNotFoundError:
        return ''


def http_get(port, path, host='127.0.0.1'):
    """(status code, content type, text) of an HTTP GET (a monitor's
    endpoints), error statuses included."""
    try:
        response = urllib.request.urlopen(
            'http://%s:%d%s' % (host, port, path), timeout=10)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        return (response.status, response.headers['content-type'],
                response.read().decode())


def run(command, *args, status=0, timeout=120):
    """Run the installed `command` with `args`, no input, its output
    captured as text; its exit status must be `status` (None: any).  The
    result."""
    done = subprocess.run([os.path.join(BIN, command), *map(str, args)],
                          capture_output=True, text=True, errors='replace',
                          stdin=subprocess.DEVNULL, timeout=timeout)
    assert status is None or done.returncode == status, (
        command, args, done.returncode, done.stdout + done.stderr)
    return done


def verify(*args, status=0, timeout=120):
    """Run zrsd-verify, which must exit `status` printing on stdout only
    (0: agreement, 1: a divergence) or stderr only (2: an error); that."""
    done = run('zrsd-verify', *args, status=None, timeout=timeout)
    out, err = done.stdout, done.stderr
    assert (done.returncode, out if status == 2 else err) == (status, ''), (
        out + err)
    return err if status == 2 else out


def port_open(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def eventlog_section(log_format=LOG_FORMAT, log_file='STDOUT',
                     log_level='INFO'):
    """The `<eventlog>` of every test config (ZEO's and zrsd's schemas)."""
    return ('<eventlog>\n  level %s\n  <logfile>\n    path %s\n'
            '    format %s\n  </logfile>\n</eventlog>\n' % (
                log_level, log_file, log_format))


def zeo_config(zeo_port, fs_path, zeo_lines='', log_format=LOG_FORMAT):
    """A plain ZEO config serving the FileStorage at `fs_path` as `1`."""
    return ('<zeo>\n  address 127.0.0.1:%d\n%s</zeo>\n<filestorage 1>\n'
            '  path %s\n</filestorage>\n' % (zeo_port, zeo_lines, fs_path)
            + eventlog_section(log_format))


CONFIG = """\
%(header)s<zeo>
  address 127.0.0.1:%(zeo_port)s
%(zeo_lines)s</zeo>
<zrs 1>
%(links)s  <filestorage>
    path %(fs_path)s
%(blob)s  </filestorage>
</zrs>
%(sections)s"""


def config_text(zeo_port, fs_path, replicate_from=None, replicate_to=None,
                blob_dir=None, sections='', log_format=LOG_FORMAT,
                zrs_lines='', zeo_lines='', log_file='STDOUT',
                log_level='INFO', header='', copy_file='off'):
    """The one zrsd (and zc.zrs) config of the tests: one `<zrs 1>`
    section.  `replicate_from` is a port on 127.0.0.1 or HOST:PORT (a
    replica reconnects within 0.1-1 s and copies no file unless
    `copy_file` says so), `replicate_to` a port on 127.0.0.1.  `zrs_lines`
    go into `<zrs 1>`, `zeo_lines` into `<zeo>`, `sections` before the
    `<eventlog>`, `header` first."""
    links = ''
    if isinstance(replicate_from, int):
        replicate_from = '127.0.0.1:%d' % replicate_from
    if replicate_from is not None:
        links += ('  replicate-from %s\n  reconnect-delay 0.1\n'
                  '  max-reconnect-delay 1\n  copy-file %s\n' % (
                      replicate_from, copy_file))
    if replicate_to:
        links += '  replicate-to 127.0.0.1:%d\n' % replicate_to
    return CONFIG % dict(
        zeo_port=zeo_port, fs_path=fs_path, header=header,
        links=links + zrs_lines, sections=sections, zeo_lines=zeo_lines,
        blob='    blob-dir %s\n' % blob_dir if blob_dir else '',
    ) + eventlog_section(log_format, log_file, log_level)


class LogRecord:
    """One log line (`extra`: the lines that follow it, a traceback;
    `port`: the client port of the connection it is about, or None)."""

    __slots__ = ('level', 'logger', 'message', 'line', 'extra', 'port')

    def __init__(self, level, logger, message, line):
        self.level, self.logger, self.message = level, logger, message
        self.line, self.extra = line, []
        port = PORT.search(message)
        self.port = port and int(port.group(1))

    @property
    def is_error(self):
        return self.level in ('ERROR', 'CRITICAL')

    @property
    def entry(self):
        return '\n'.join([self.line] + self.extra)


class LogTail:
    """A log file parsed as it grows into `records` (a first line of
    another format has level '?'), by client port (`ports`), and
    `connected`: the indices of a zrsd replica's 'connected (' records."""

    def __init__(self, path):
        self.path, self.offset, self.pending = path, 0, b''
        self.records, self.connected = [], []
        self.ports = collections.defaultdict(list)

    def poll(self, final=False):
        """The records so far (`final`: the last line too, even without
        its newline)."""
        try:
            with open(self.path, 'rb') as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.records
        self.offset += len(data)
        lines = (self.pending + data).split(b'\n')
        self.pending = b'' if final and lines[-1] else lines.pop()
        for raw in lines:
            line = raw.decode('utf-8', 'replace')
            m = LOG_LINE.match(line)
            if m is None and self.records:
                self.records[-1].extra.append(line)
                continue
            record = LogRecord(*m.groups(), line) if m else \
                LogRecord('?', '?', line, line)
            self.records.append(record)
            if record.port:
                self.ports[record.port].append(record)
            if record.logger == 'zrsd.replica.client' and \
                    ': connected (' in record.message:
                self.connected.append(len(self.records) - 1)
        return self.records


@contextlib.contextmanager
def captured_logs():
    """This process's WARNING+ log records (zrsd's and ZODB's), as the
    daemon's log file would have them: a list, emptied after each case."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger()
    level = root.level
    root.setLevel(min(level or logging.WARNING, logging.WARNING))
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


class Process:
    """A child process whose combined output goes to a log file."""

    def __init__(self, args, log_path, env=None, cwd=None):
        self.args, self.log_path = args, log_path
        self._log = open(log_path, 'ab')
        self.popen = subprocess.Popen(args, stdout=self._log, env=env,
                                      stderr=subprocess.STDOUT, cwd=cwd)

    def log(self):
        return read_text(self.log_path)

    def wait_for_log(self, text, timeout=60.0):
        """Wait until `text` appears in the log."""
        def seen():
            found = text in self.log()
            if not found and self.popen.poll() is not None:
                raise AssertionError(
                    '%s exited with %s before logging %r:\n%s' % (
                        self.args, self.popen.returncode, text, self.log()))
            return found
        wait_until(seen, timeout, message='%r in %s' % (text, self.log_path))

    def signal(self, signum):
        self.popen.send_signal(signum)

    def stop(self, timeout=60.0, kill=False):
        """SIGTERM (SIGKILL if `kill`) and wait; returns the exit status."""
        if self.popen.poll() is None:
            (self.popen.kill if kill else self.popen.terminate)()
        try:
            return self.popen.wait(timeout)
        finally:
            self._log.close()

    def kill(self):
        """SIGKILL and wait (also makes sure it is gone, for finalisers)."""
        self.stop(30, kill=True)

    close = kill


class Node:
    """One server process, restartable on the same ports, with its files
    (`NAME.conf`, `NAME.fs`, `NAME-N.log` per start) in `directory`.
    Subclasses define `config()` (or `write_config`), `program` or
    `command`, `ready`.  `register` is given each started process."""

    env = None          # more (or, as None, fewer) environment variables
    cwd = None          # its working directory (None: ours)
    read_only = True    # what `client()` asks for unless told
    program = 'runzeo'  # in BIN, run with `-C NAME.conf`

    def __init__(self, directory, name, register=None):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.name, self.register = name, register
        self.fs_path = os.path.join(self.directory, name + '.fs')
        self.config_path = os.path.join(self.directory, name + '.conf')
        self.zeo_port = free_port()
        self.process = None
        self.starts = 0

    def config(self):
        """The text of the node's config file."""
        raise NotImplementedError

    def write_config(self):
        """Write the node's config file; returns its path."""
        with open(self.config_path, 'w') as f:
            f.write(self.config())
        return self.config_path

    def command(self):
        return [os.path.join(BIN, self.program), '-C', self.config_path]

    def ready(self):
        """The log lines that say the node is up (ZEO's, by default)."""
        return ("listening on ('127.0.0.1', %d)" % self.zeo_port,)

    def environment(self):
        """Ours with `env` (a None value removes a variable), or None."""
        if self.env:
            return {key: value for key, value in
                    dict(os.environ, **self.env).items() if value is not None}

    @property
    def zeo_address(self):
        return ('127.0.0.1', self.zeo_port)

    @property
    def zeo_arg(self):
        """The ZEO address as the commands take it: 'host:port'."""
        return '%s:%d' % self.zeo_address

    @property
    def pid(self):
        return self.process.popen.pid

    @property
    def log_path(self):
        return os.path.join(self.directory, '%s-%d.log' % (
            self.name, self.starts))

    def launch(self):
        """Write the config and start the process without waiting."""
        assert not self.running()
        self.write_config()
        self.starts += 1
        self.process = Process(self.command(), self.log_path,
                               env=self.environment(), cwd=self.cwd)
        if self.register is not None:
            self.register(self.process)
        return self

    def start(self, timeout=60.0):
        """Start the process; return once it logged its `ready` lines (no
        port probes, which would show in its log)."""
        self.launch()
        for line in self.ready():
            self.process.wait_for_log(line, timeout)
        return self

    def stop(self, timeout=60.0, expect=0):
        """SIGTERM and wait; returns the exit status, which must be
        `expect` unless that is None."""
        if self.process is None:
            return None
        status = self.process.stop(timeout)
        assert expect is None or status == expect, (
            '%s exited with %s:\n%s' % (self.name, status, self.log()))
        return status

    def wait(self, timeout=60.0):
        """Wait for the process to exit by itself; its exit status."""
        return self.process.popen.wait(timeout)

    def kill(self):
        """SIGKILL (no clean-up in the process) and reap."""
        self.process.kill()

    def signal(self, signum):
        self.process.signal(signum)

    def close(self):
        if self.process is not None:
            self.process.close()

    def running(self):
        return self.process is not None and self.process.popen.poll() is None

    def check_alive(self):
        """True, or fail at once with the log if the process exited."""
        if not self.running():
            raise AssertionError('%s exited with %s:\n%s' % (
                self.name, self.process and self.process.popen.returncode,
                self.log()))
        return True

    def log(self):
        return self.process.log() if self.process is not None else ''

    def wait_for_log(self, text, timeout=60.0):
        self.process.wait_for_log(text, timeout)

    def client(self, **kw):
        """A ZEO ClientStorage of this node (`read_only` unless told)."""
        kw.setdefault('read_only', self.read_only)
        return ZEO.client(self.zeo_address, **kw)

    def db(self, **kw):
        return ZEO.DB(self.zeo_address, **kw)

    def last_tid(self):
        with contextlib.closing(self.client(read_only=True)) as storage:
            return storage.lastTransaction()

    def wait_for_tid(self, tid, timeout=120.0, storage=None):
        """Wait until a ZEO client (`storage`, or a new one) sees `tid` as
        the last transaction; fail fast if the process dies."""
        client = storage or self.client(read_only=True)
        try:
            wait_until(
                lambda: self.check_alive() and
                client.lastTransaction() == tid,
                timeout, message='%s lastTransaction == %s' % (
                    self.name, tid.hex()))
        except AssertionError as exc:
            raise AssertionError('%s; it is %s' % (
                exc, client.lastTransaction().hex())) from None
        finally:
            if storage is None:
                client.close()


def stop_all(*nodes):
    """Stop each node in turn (each must exit 0)."""
    for node in nodes:
        node.stop()
