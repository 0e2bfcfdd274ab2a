"""The zrsd processes of a run and their logs: `Replica`, `started` (so
that an interrupted run leaves no daemon behind), `stop`, `LogTail` (a log
file read as it grows), `read_frames`, `read_from`, `captured_logs`."""
import collections
import contextlib
import logging
import re
import struct
import time

import ZODB.FileStorage

from harness.history import copy_transaction
from harness.zrsd_nodes import ZrsdNode

IO_TIMEOUT = 60.0                   # seconds before a peer counts as hung

LOG_LINE = re.compile(
    r'^(\d{4}-\d\d-\d\dT\S+) (TRACE|DEBUG|BLATHER|INFO|WARNING|ERROR|'
    r'CRITICAL|PROBLEM) (\S+) ?(.*)$')
PORT = re.compile(r'-> 127\.0\.0\.1:(\d+): ')

_STARTED = []
started = _STARTED.append   # a node's `register`: close_all() kills it


def close_all():
    """Kill whatever registered process still runs."""
    for peer in _STARTED:
        peer.close()
    del _STARTED[:]


class Replica(ZrsdNode):
    """A zrsd replica of port `upstream`, registered, as the fuzzer needs
    it: no keep-alives, ZEO served before the first transaction, always a
    reconnection after 0.1 s (a case per connection: a growing back-off
    would slow every case down), and logging at DEBUG (zrsd logs a
    repeated apply failure at DEBUG; the judges look)."""

    log_level, zrs_lines = 'DEBUG', '  keep-alive-delay 0\n'
    zeo_lines = '  serve-empty true\n'

    def __init__(self, directory, upstream, blobs=False):
        super().__init__(directory, 'replica', upstream, blobs=blobs,
                         register=started)

    def config(self):
        text, old = super().config(), '  max-reconnect-delay 1\n'
        assert text.count(old) == 1, text
        return text.replace(old, '  max-reconnect-delay 0.1\n')


def read_frames(sock, count, timeout=IO_TIMEOUT):
    """Up to `count` frames from `sock`: fewer at EOF, on an error or
    after `timeout` seconds."""
    data, frames, deadline = b'', [], time.monotonic() + timeout
    while True:
        while len(frames) < count and len(data) >= 4 and len(data) >= 4 + (
                size := struct.unpack('>I', data[:4])[0]):
            frames.append(data[4:4 + size])
            data = data[4 + size:]
        if len(frames) == count or time.monotonic() >= deadline:
            return frames
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except OSError:     # a timeout too
            return frames
        if not chunk:
            return frames
        data += chunk


def read_from(path, start):
    """The transactions of the FileStorage at `path` from tid `start`, as
    `Txn`s (the file of a live process: no lock, no index)."""
    iterator = ZODB.FileStorage.FileIterator(path, start)
    try:
        return [copy_transaction(t) for t in iterator]
    finally:
        iterator.close()


def stop(lane, name, process):
    """SIGTERM `process` if it runs (it must exit with status 0); returns
    the status, None if it had exited."""
    alive = process.popen.poll() is None
    status = process.stop(IO_TIMEOUT) if alive else None
    process.close()
    if alive and status != 0:
        lane.violation('daemon crashes', 'the %s exited with status %s on '
                       'SIGTERM' % (name, status))
    return status


class Record:
    """One log line (`extra`: the lines that follow it, a traceback)."""

    __slots__ = ('level', 'logger', 'message', 'line', 'extra')

    def __init__(self, level, logger, message, line):
        self.level, self.logger, self.message = level, logger, message
        self.line, self.extra = line, []

    @property
    def is_error(self):
        return self.level in ('ERROR', 'CRITICAL')


class LogTail:
    """A zrsd log file parsed incrementally into `records`, by client port
    (`ports`), and `connected`: the indices of a replica's 'connected ('
    records."""

    def __init__(self, path):
        self.path, self.offset, self.pending = path, 0, b''
        self.records, self.connected = [], []
        self.ports = collections.defaultdict(list)

    def poll(self):
        try:
            with open(self.path, 'rb') as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.records
        self.offset += len(data)
        lines = (self.pending + data).split(b'\n')
        self.pending = lines.pop()
        for raw in lines:
            line = raw.decode('utf-8', 'replace')
            m = LOG_LINE.match(line)
            if m is None and self.records:
                self.records[-1].extra.append(line)
                continue
            record = Record(*m.group(2, 3, 4), line) if m else \
                Record('?', '?', line, line)
            self.records.append(record)
            port = PORT.search(record.message)
            if port:
                self.ports[int(port.group(1))].append(record)
            if record.logger == 'zrsd.replica.client' and \
                    ': connected (' in record.message:
                self.connected.append(len(self.records) - 1)
        return self.records

    def scan(self, lane, ok, text):
        """CRITICAL lines are crashes; an ERROR line that is not `ok(index,
        record)` is a violation described by `text`."""
        for index, record in enumerate(self.poll()):
            if record.level == 'CRITICAL':
                lane.violation('daemon crashes', 'CRITICAL: %s'
                               % record.line[:500])
            elif record.is_error and not ok(index, record):
                lane.violation('log', '%s: %s' % (text, record.line[:500]))


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
