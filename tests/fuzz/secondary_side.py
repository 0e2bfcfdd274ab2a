"""The secondary side: zrsd replicas fed one case per connection by a case
server, a fake primary that serves exactly one case and then closes."""
import contextlib
import os
import shutil
import socket
import sys
import time

import ZEO
import ZODB.FileStorage
from ZODB.utils import z64

from harness.history import copy_transaction
from harness.process import free_port, handshake_frames, wait_until
from zrsd import protocol as zrs

from .cases import WINDOW_NEED
from .judges import (check_blob_temp, check_file, check_markers,
                     compare_history, judge, judge_position,
                     traceback_from_protocol)
from .logs import LogTail
from .nodes import IO_TIMEOUT, start_replica
from .results import LaneAbort


def read_handshake(sock):
    """(protocol name, start tid) from a secondary, or None if it closes
    first.  (It sends nothing more until we do: no keep-alives.)"""
    data = b''
    while handshake_frames(data) is None:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    return handshake_frames(data)


class Epoch:
    """One replica process on fresh files, with its own case server port."""

    def __init__(self, lane, number):
        self.lane = lane
        self.directory = os.path.join(lane.directory, 'epoch-%d' % number)
        os.makedirs(self.directory)
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.zeo_port = free_port()
        self.blob_dir = (os.path.join(self.directory, 'blobs')
                         if lane.blobs else None)
        self.process = start_replica(self.directory, self.zeo_port,
                                     self.port, self.blob_dir)
        self.fs_path = os.path.join(self.directory, 'replica.fs')
        self.log = LogTail(self.process.log_path)
        self.verified = 0       # source transactions checked over ZEO
        self.connections = 0
        self.sock = None
        self.position = 0

    def alive(self):
        return self.process.popen.poll() is None

    def accept(self):
        """The replica's next connection: (socket, protocol, start tid)."""
        deadline = time.monotonic() + IO_TIMEOUT
        self.listener.settimeout(0.2)
        while True:
            if not self.alive():
                raise self.lane.died(self)
            try:
                sock, _ = self.listener.accept()
                break
            except socket.timeout:
                if time.monotonic() > deadline:
                    raise self.lane.hung(self, 'the replica did not '
                                         'reconnect within %ss' % IO_TIMEOUT)
        sock.settimeout(IO_TIMEOUT)
        try:
            handshake = read_handshake(sock)
        except socket.timeout:
            handshake = None
        if handshake is None:
            sock.close()
            raise self.lane.hung(self, 'no handshake from the replica')
        protocol, tid = handshake
        self.connections += 1
        self.lane.summary.add('secondary', 'connections')
        return sock, protocol, tid

    def segment(self, number):
        """Log records of connection `number` (0-based), once complete."""
        def complete():
            self.log.poll()
            return len(self.log.connected) > number + 1
        wait_until(complete, IO_TIMEOUT, message='connection %d in '
                   '%s' % (number + 1, self.log.path))
        start, end = self.log.connected[number:number + 2]
        return self.log.records[start:end]


class ReplicaLane:
    """One zrsd replica (per epoch) fed one case per connection."""

    side = 'secondary'

    def __init__(self, generator, directory, summary, verbose=False,
                 keep=False):
        self.source = source = generator.source
        self.generator = generator
        self.keep = keep
        self.lane = generator.lane
        self.blobs = source.blob_dir is not None
        self.protocol = zrs.PROTOCOL_2_1 if self.blobs else zrs.PROTOCOL_2_0
        self.directory = directory
        self.summary = summary
        self.markers = generator.markers
        self.verbose = verbose
        self.epochs = 0

    def say(self, text):
        if self.verbose:
            print('[%s] %s' % (self.lane, text), file=sys.stderr, flush=True)

    def died(self, epoch):
        epoch.log.poll()
        tail = '\n'.join(r.line[:300] for r in epoch.log.records[-15:])
        stopped = [r.message for r in epoch.log.records
                   if r.logger == 'zrsd' and 'stopping (' in r.message]
        outside = ' (it logged "%s": a signal from outside?)' % stopped[0] \
            if stopped else ''
        self.summary.violation('daemon crashes', self.side, 'the %s replica '
                               'exited with status %s%s; its log ends:\n%s'
                               % (self.lane, epoch.process.popen.returncode,
                                  outside, tail))
        return LaneAbort()

    def hung(self, epoch, text, case=None):
        self.summary.violation('hangs', self.side, '%s: %s' % (
            self.lane, text), case)
        return LaneAbort()

    def run(self, cases):
        epoch = None
        number = 0
        try:
            while number < cases:
                if epoch is None:
                    epoch = self.start_epoch()
                if len(self.source) - epoch.position < WINDOW_NEED:
                    self.end_epoch(epoch)
                    epoch = None
                    continue
                case = self.generator.case(number, epoch.position)
                number += 1
                self.summary.add(self.side, 'cases')
                self.summary.add(self.side, 'cases %s' % (
                    'blobs' if self.blobs else 'plain'))
                self.serve(epoch, case)
                sock, protocol, tid = epoch.accept()
                self.check(epoch, case, protocol, tid)
                epoch.sock = sock
                if self.verbose and number % 50 == 0:
                    self.say('%d cases, at source index %d' % (
                        number, epoch.position))
        except LaneAbort:
            pass
        finally:
            if epoch is not None:
                self.end_epoch(epoch)

    def start_epoch(self):
        self.epochs += 1
        self.summary.add(self.side, 'epochs')
        epoch = Epoch(self, self.epochs)
        self.say('epoch %d: replica on port %d' % (self.epochs,
                                                   epoch.zeo_port))
        try:
            sock, protocol, tid = epoch.accept()
        except LaneAbort:
            epoch.process.close()
            epoch.listener.close()
            raise
        epoch.sock = sock
        if tid != z64 or protocol != self.protocol:
            self.summary.violation('streams', self.side, 'a new %s replica '
                                   'sent %r, %s' % (self.lane, protocol,
                                                    tid.hex()))
        return epoch

    def serve(self, epoch, case):
        """Send the case, close our side, wait until zrsd drops it."""
        sock = epoch.sock
        try:
            sock.sendall(case.wire)
        except socket.timeout:
            raise self.hung(epoch, 'the replica stopped reading', case)
        except OSError:
            pass   # it dropped the connection already
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except socket.timeout:
            raise self.hung(epoch, 'the replica kept the connection open '
                            'after the stream ended', case)
        except OSError:
            pass
        finally:
            sock.close()

    def check(self, epoch, case, protocol, tid):
        summary, side = self.summary, self.side
        if protocol != self.protocol:
            summary.violation('streams', side, 'handshake with %r' % (
                protocol,), case)
        position = judge_position(summary, side, case, self.source, tid)
        summary.add(side, 'commits', max(0, position - epoch.position))
        epoch.position = position
        self.check_zeo(epoch, case, tid)
        check_markers(summary, side, self.markers, case)
        if self.blobs:
            check_blob_temp(summary, side, epoch.blob_dir, case)
        self.check_log(epoch, case, epoch.connections - 2)

    def check_zeo(self, epoch, case, tid):
        """A fresh read-only ZEO client answers, its last transaction is the
        handshake's, and it serves the records committed since the last
        check; those transactions, read from the file (the replica is idle
        while it waits for our first frame), are the source's."""
        summary, side = self.summary, self.side
        new = self.source.txns[epoch.verified:epoch.position]
        try:
            client = ZEO.client(('127.0.0.1', epoch.zeo_port),
                                read_only=True, wait_timeout=IO_TIMEOUT)
        except Exception as exc:
            if not epoch.alive():
                raise self.died(epoch)
            raise self.hung(epoch, 'ZEO does not answer: %s: %s' % (
                type(exc).__name__, exc), case)
        try:
            last = client.lastTransaction()
            if last != tid:
                summary.violation('partial/unchecked transactions', side,
                                  'ZEO says the last transaction is %s, '
                                  'the handshake %s' % (last.hex(),
                                                        tid.hex()), case)
            for txn in new:
                for r in txn.records:
                    if r.data is None:
                        continue
                    data = client.loadSerial(r.oid, r.tid)
                    if data != r.data:
                        summary.violation(
                            'partial/unchecked transactions', side,
                            'ZEO serves other data for %s at %s' % (
                                r.oid.hex(), r.tid.hex()), case)
        finally:
            client.close()
        if new:
            iterator = ZODB.FileStorage.FileIterator(epoch.fs_path,
                                                     new[0].tid)
            try:
                got = [copy_transaction(t) for t in iterator]
            finally:
                iterator.close()
            if compare_history(summary, side, case, self.source,
                               epoch.verified, got) and len(got) != len(new):
                summary.violation('partial/unchecked transactions', side,
                                  'the file has %d new transactions, the '
                                  'handshake says %d' % (len(got), len(new)),
                                  case)
        epoch.verified = epoch.position

    def check_log(self, epoch, case, number):
        """Connection `number` ended in exactly one line: one ERROR or one
        INFO `disconnected`; nothing else alarming."""
        summary, side = self.summary, self.side
        records = epoch.segment(number)
        errors = [r for r in records if r.is_error]
        ours = [r for r in errors if r.logger == 'zrsd.replica.client']
        ended = [r for r in records if r.logger == 'zrsd.replica.client'
                 and ': disconnected' in r.message]
        # zrsd logs a repeated apply failure at DEBUG (rate limiting): the
        # replicas run at DEBUG, so that we see those too.
        repeats = [r for r in records if r.logger == 'zrsd.replica.client'
                   and r.level == 'DEBUG' and r.message.endswith(
                       'open transaction aborted, reconnecting')]
        for record in repeats:
            if not any(r.is_error and r.message == record.message
                       for r in epoch.log.records):
                summary.violation('log', side, 'a rejection logged at DEBUG'
                                  ' only: %s' % record.line[:300], case)
        ours += repeats
        if len(ours) + len(ended) != 1:
            summary.violation('log', side, 'the connection ended with %d '
                              'rejection and %d "disconnected" lines: %s' % (
                                  len(ours), len(ended), ' | '.join(
                                      r.line[:200] for r in ours + ended)),
                              case)
        if not ours:
            judge(summary, side, case, None)
            return
        record = ours[0]
        if traceback_from_protocol(record.extra):
            summary.violation('log', side, 'the protocol module raised a '
                              'non-protocol error: %s' % record.message[:300],
                              case)
        text = record.message
        judge(summary, side, case, text, record.line)

    def end_epoch(self, epoch):
        """SIGTERM the replica, then compare its file with the source."""
        summary, side = self.summary, self.side
        alive = epoch.alive()
        status = epoch.process.stop(IO_TIMEOUT) if alive else None
        epoch.process.close()
        if epoch.sock is not None:
            epoch.sock.close()
        epoch.listener.close()
        if alive and status != 0:
            summary.violation('daemon crashes', side, 'the %s replica exited '
                              'with status %s on SIGTERM'
                              % (self.lane, status))
        epoch.log.poll()
        for record in epoch.log.records:
            if record.level == 'CRITICAL':
                summary.violation('daemon crashes', side, 'CRITICAL: %s'
                                  % record.line[:500])
        if epoch.log.connected:
            for record in epoch.log.records[epoch.log.connected[-1]:]:
                if record.is_error:
                    summary.violation('log', side, 'ERROR while stopping: '
                                      '%s' % record.line[:300])
        if alive:
            before = len(summary.violations)
            check_file(summary, side, self.source, epoch.fs_path,
                       epoch.blob_dir, epoch.position)
            if len(summary.violations) == before and not self.keep:
                shutil.rmtree(epoch.directory, ignore_errors=True)
        self.say('epoch %d ended at source index %d' % (
            self.epochs, epoch.position))
