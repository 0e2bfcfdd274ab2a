"""Reading a zrsd log file as it grows: records, their traceback lines,
and the client port each one names."""
import collections
import re

LOG_LINE = re.compile(
    r'^(\d{4}-\d\d-\d\dT\S+) (TRACE|DEBUG|BLATHER|INFO|WARNING|ERROR|'
    r'CRITICAL|PROBLEM) (\S+) ?(.*)$')
PORT = re.compile(r'-> 127\.0\.0\.1:(\d+): ')


class Record:
    """One log line (`extra`: the lines that follow it, a traceback)."""

    __slots__ = ('level', 'logger', 'message', 'line', 'extra')

    def __init__(self, level, logger, message, line):
        self.level, self.logger, self.message = level, logger, message
        self.line = line
        self.extra = []

    @property
    def is_error(self):
        return self.level in ('ERROR', 'CRITICAL')


class LogTail:
    """Parse a zrsd log file incrementally into `Record`s (a record's
    traceback lines go to its `extra`)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.pending = b''
        self.records = []
        self.ports = collections.defaultdict(list)
        self.connected = []   # indices of 'connected (' records (replicas)

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
            if m is None:
                if self.records:
                    self.records[-1].extra.append(line)
                else:
                    self.records.append(Record('?', '?', line, line))
                continue
            record = Record(m.group(2), m.group(3), m.group(4), line)
            self.records.append(record)
            port = PORT.search(record.message)
            if port:
                self.ports[int(port.group(1))].append(record)
            if record.logger == 'zrsd.replica.client' and \
                    ': connected (' in record.message:
                self.connected.append(len(self.records) - 1)
        return self.records
