"""The secondary side: zrsd replicas fed one case per connection by a case
server, a fake primary that serves exactly one case and then closes."""
import contextlib
import os
import shutil
import socket
import time

import ZEO
from ZODB.utils import z64

from harness.process import free_port, wait_until
from zrsd import protocol as zrs

from .judges import UNCHECKED, Lane, traceback_from_protocol
from .nodes import (IO_TIMEOUT, LogTail, read_frames, read_from,
                    start_replica, stop)


class ReplicaLane(Lane):
    """A zrsd replica fed one case per connection.  Near the end of the
    source it stops, and a fresh one starts: a new epoch, on new files,
    with its own case server port."""

    side, renew = 'secondary', True

    def __init__(self, generator, directory, summary, verbose=False,
                 keep=False):
        self.source, self.generator = generator.source, generator
        self.name, self.directory, self.summary = (generator.lane, directory,
                                                   summary)
        self.verbose, self.keep = verbose, keep
        self.blobs = self.source.blob_dir is not None
        self.protocol = zrs.PROTOCOL_2_1 if self.blobs else zrs.PROTOCOL_2_0
        self.epochs, self.process = 0, None

    def died(self):
        records = self.log.poll()
        stopped = [r.message for r in records
                   if r.logger == 'zrsd' and 'stopping (' in r.message]
        return self.abort('daemon crashes', 'the %s replica exited with '
                          'status %s%s; its log ends:\n%s' % (
                              self.name, self.process.popen.returncode,
                              ' (it logged "%s": a signal from outside?)'
                              % stopped[0] if stopped else '', '\n'.join(
                                  r.line[:300] for r in records[-15:])))

    def hung(self, text, case=None):
        return self.abort('hangs', '%s: %s' % (self.name, text), case)

    def open(self):
        self.epochs += 1
        self.add('epochs')
        self.epoch_dir = os.path.join(self.directory, 'epoch-%d' % self.epochs)
        os.makedirs(self.epoch_dir)
        self.listener = socket.create_server(('127.0.0.1', 0), backlog=16)
        self.listener.settimeout(0.2)
        self.zeo_port = free_port()
        self.fs_path = os.path.join(self.epoch_dir, 'replica.fs')
        self.blob_dir = (os.path.join(self.epoch_dir, 'blobs')
                         if self.blobs else None)
        self.process = start_replica(self.epoch_dir, self.zeo_port,
                                     self.listener.getsockname()[1],
                                     self.blob_dir)
        self.log = LogTail(self.process.log_path)
        self.connections = self.position = 0
        self.sock = None
        self.say('epoch %d: replica on port %d' % (self.epochs,
                                                   self.zeo_port))
        protocol, tid = self.accept()
        if tid != z64 or protocol != self.protocol:
            self.violation('streams', 'a new %s replica sent %r, %s' % (
                self.name, protocol, tid.hex()))

    def run_case(self, number):
        case = self.generator.case(number, self.position)
        self.add('cases ' + self.name)
        self.serve(case)
        self.check(case, *self.accept())
        if number % 50 == 49:
            self.say('%d cases, at source index %d' % (
                number + 1, self.position))

    def accept(self):
        """The replica's next connection and handshake: its socket goes to
        `sock`; returns (protocol, start tid)."""
        deadline = time.monotonic() + IO_TIMEOUT
        while True:
            if self.process.popen.poll() is not None:
                raise self.died()
            try:
                sock, _ = self.listener.accept()
                break
            except socket.timeout:
                if time.monotonic() > deadline:
                    raise self.hung('the replica did not reconnect '
                                    'within %ss' % IO_TIMEOUT)
        hello = read_frames(sock, 2)   # then nothing until we send
        if len(hello) < 2:
            sock.close()
            raise self.hung('no handshake from the replica')
        sock.settimeout(IO_TIMEOUT)
        self.sock = sock
        self.connections += 1
        self.add('connections')
        return hello

    def serve(self, case):
        """Send the case, close our side, wait until zrsd drops it."""
        with self.sock as sock:
            try:
                sock.sendall(case.wire)
            except socket.timeout:
                raise self.hung('the replica stopped reading', case)
            except OSError:
                pass   # it dropped the connection already
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(65536):
                    pass
            except socket.timeout:
                raise self.hung('the replica kept the connection open '
                                'after the stream ended', case)
            except OSError:
                pass

    def check(self, case, protocol, tid):
        """After a case: the handshake (protocol, position), ZEO, the
        file's new transactions, markers, blob temporaries and the log."""
        if protocol != self.protocol:
            self.violation('streams', 'handshake with %r' % (protocol,), case)
        old = self.position
        # (The replica is idle while it waits for our first frame.)
        self.advance(case, tid, lambda start: read_from(self.fs_path, start))
        self.check_zeo(case, tid, self.source.txns[old:self.position])
        self.check_leftovers(case)
        self.check_log(case, self.connections - 2)

    def check_zeo(self, case, tid, new):
        """A fresh read-only ZEO client answers, its last transaction is the
        handshake's, and it serves the records of `new` transactions."""
        try:
            client = ZEO.client(('127.0.0.1', self.zeo_port),
                                read_only=True, wait_timeout=IO_TIMEOUT)
        except Exception as exc:
            if self.process.popen.poll() is not None:
                raise self.died()
            raise self.hung('ZEO does not answer: %s: %s' % (
                type(exc).__name__, exc), case)
        try:
            last = client.lastTransaction()
            if last != tid:
                self.violation(UNCHECKED, 'ZEO says the last transaction is '
                               '%s, the handshake %s' % (last.hex(),
                                                         tid.hex()), case)
            for r in (r for txn in new for r in txn.records):
                if r.data is not None and \
                        client.loadSerial(r.oid, r.tid) != r.data:
                    self.violation(UNCHECKED, 'ZEO serves other data for %s '
                                   'at %s' % (r.oid.hex(), r.tid.hex()), case)
        finally:
            client.close()

    def check_log(self, case, number):
        """Connection `number` (0-based) ended in exactly one line: one
        ERROR or one INFO `disconnected`; nothing else alarming."""
        log = self.log
        wait_until(lambda: log.poll() and len(log.connected) > number + 1,
                   IO_TIMEOUT, message='connection %d in %s' % (
                       number + 1, log.path))
        start, end = log.connected[number:number + 2]
        records = [r for r in log.records[start:end]
                   if r.logger == 'zrsd.replica.client']
        ours = [r for r in records if r.is_error]
        ended = [r for r in records if ': disconnected' in r.message]
        # zrsd logs a repeated apply failure at DEBUG (rate limiting): the
        # replicas run at DEBUG, so that we see those too.
        for record in records:
            if record.level == 'DEBUG' and record.message.endswith(
                    'open transaction aborted, reconnecting'):
                ours.append(record)
                if not any(r.is_error and r.message == record.message
                           for r in log.records):
                    self.violation('log', 'a rejection logged at DEBUG '
                                   'only: %s' % record.line[:300], case)
        if len(ours) + len(ended) != 1:
            self.violation('log', 'the connection ended with %d rejection '
                           'and %d "disconnected" lines: %s' % (
                               len(ours), len(ended), ' | '.join(
                                   r.line[:200] for r in ours + ended)), case)
        if ours and traceback_from_protocol(ours[0].extra):
            self.violation('log', 'the protocol module raised a non-protocol'
                           ' error: %s' % ours[0].message[:300], case)
        self.judge(case, *((ours[0].message, ours[0].line) if ours
                           else (None,)))

    def close(self):
        """SIGTERM the replica, then compare its file with the source."""
        if self.process is None:
            return
        status = stop(self, '%s replica' % self.name, self.process)
        self.process = None
        if self.sock is not None:
            self.sock.close()
        self.listener.close()
        last = self.log.connected[-1] if self.log.connected else None
        self.log.scan(self, lambda index, record: last is None or
                      index < last, 'ERROR while stopping')
        if status is not None and self.check_file(
                self.fs_path, self.blob_dir, self.position) and not self.keep:
            shutil.rmtree(self.epoch_dir, ignore_errors=True)
        self.say('epoch %d ended at source index %d' % (
            self.epochs, self.position))
