"""The secondary side: the cases (`cases`) fed to zrsd replicas, one per
connection, by a case server that serves exactly one case and then closes
(`ReplicaLane`), or in this process straight into `Receiver` through
`FrameDecoder`, in random chunks, over a real FileStorage, about a
thousand cases a second (`InProcessLane`)."""
import contextlib
import functools
import logging
import os
import random
import shutil
import socket
import traceback

import ZODB.FileStorage
from ZODB.utils import z64

from harness.history import copy_transaction, transactions_from
from harness.process import LogTail, wait_until
from harness.stream import bytewise, read_frames, read_until_closed
from zrsd import protocol as zrs
from zrsd.replica.receiver import Receiver
from zrsd.replica.storage import ReplicaStorage

from .cases import MAX_FRAME
from .judges import UNCHECKED, Lane, traceback_from_protocol
from .nodes import IO_TIMEOUT, Replica, stop

# Expected WARNINGs of the in-process lane: a corrupted record restored
# before its commit's checksum rejects the stream may differ from its back
# pointer's data (FileStorage says so; zrsd makes that a WARNING).
ALLOWED_WARNINGS = ('cannot connect', 'commits without checksums',
                    'back pointer of', 'Mismatch between data and backpointer')


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
        self.epochs, self.node = 0, None

    def died(self):
        records = self.log.poll()
        stopped = [r.message for r in records
                   if r.logger == 'zrsd' and 'stopping (' in r.message]
        return self.abort('daemon crashes', 'the %s replica exited with '
                          'status %s%s; its log ends:\n%s' % (
                              self.name, self.node.process.popen.returncode,
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
        self.node = Replica(self.epoch_dir, self.listener.getsockname()[1],
                            self.blobs).launch()
        self.blob_dir, self.log = self.node.blob_dir, LogTail(
            self.node.log_path)
        self.connections = self.position = 0
        self.sock = None
        self.say('epoch %d: replica on port %d' % (self.epochs,
                                                   self.node.zeo_port))
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
        def accepted():
            if not self.node.running():
                raise self.died()
            with contextlib.suppress(socket.timeout):
                return self.listener.accept()[0]
        try:
            sock = wait_until(accepted, IO_TIMEOUT, 0)
        except AssertionError:
            raise self.hung('the replica did not reconnect within %ss'
                            % IO_TIMEOUT)
        hello = read_frames(sock, 2, IO_TIMEOUT)   # then it waits for us
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
                read_until_closed(sock)
            except socket.timeout:
                raise self.hung('the replica kept the connection open '
                                'after the stream ended', case)

    def check(self, case, protocol, tid):
        """After a case: the handshake (protocol, position), ZEO, the
        file's new transactions, markers, blob temporaries and the log."""
        if protocol != self.protocol:
            self.violation('streams', 'handshake with %r' % (protocol,), case)
        old = self.position
        # (The replica is idle while it waits for our first frame.)
        self.advance(case, tid, functools.partial(transactions_from,
                                                  self.node.fs_path))
        self.check_zeo(case, tid, self.source.txns[old:self.position])
        self.check_leftovers(case)
        self.check_log(case, self.connections - 2)

    def check_zeo(self, case, tid, new):
        """A fresh read-only ZEO client answers, its last transaction is the
        handshake's, and it serves the records of `new` transactions."""
        try:
            client = self.node.client(wait_timeout=IO_TIMEOUT)
        except Exception as exc:
            if not self.node.running():
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
        node, self.node = self.node, None
        if node is None:
            return
        status = stop(self, '%s replica' % self.name, node.process)
        if self.sock is not None:
            self.sock.close()
        self.listener.close()
        last = self.log.connected[-1] if self.log.connected else None
        self.scan_log(self.log, lambda index, record: last is None or
                      index < last, 'ERROR while stopping')
        if status is not None and self.check_file(
                node.fs_path, self.blob_dir, self.position) and not self.keep:
            shutil.rmtree(self.epoch_dir, ignore_errors=True)
        self.say('epoch %d ended at source index %d' % (
            self.epochs, self.position))


_ATTRS = ('__defaults__', '__kwdefaults__', '__name__', '__qualname__',
          '__module__', '__doc__', '__code__', '__dict__')


def snapshot(objects):
    """The attributes of the objects the unpickler hands out."""
    return {key: {name: dict(vars(obj)) if name == '__dict__' else
                  getattr(obj, name, None) for name in _ATTRS
                  if name != '__dict__' or hasattr(obj, '__dict__')}
            for key, obj in objects.items()}


def restore(objects, state):
    for key, obj in objects.items():
        for name, value in state[key].items():
            if name == '__dict__' and isinstance(vars(obj), dict):
                vars(obj).clear()
                vars(obj).update(value)
            elif name != '__dict__' and getattr(obj, name, None) is not value:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(obj, name, value)


def chunks(data, rng):
    """`data` in pieces, as TCP might deliver it."""
    mode = rng.random()
    if mode < 0.4:
        return [data]
    if mode < 0.5 and len(data) < 4000:
        return bytewise(data)
    pieces, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, 9000)
        pieces.append(data[pos:pos + n])
        pos += n
    return pieces


class InProcessLane(Lane):
    """Cases fed to a `Receiver` over a real FileStorage, in this process."""

    side, renew, in_process = 'in-process', True, True

    def __init__(self, generator, directory, summary, check_checksums=True):
        self.source, self.generator = generator.source, generator
        self.directory, self.summary = directory, summary
        self.check_checksums = check_checksums
        self.decoder = zrs.MessageDecoder()
        self.objects = dict(zrs._BUILTIN_GLOBALS)   # what the unpickler
        self.objects.update(zrs.resolve_globals(    # hands out by default
            zrs.DEFAULT_ALLOWED_GLOBALS))
        self.state = snapshot(self.objects)
        self.epoch, self.fs = 0, None

    def open(self):
        self.epoch += 1
        self.add('epochs')
        self.epoch_dir = os.path.join(self.directory, '%s-%d' % (
            self.generator.lane, self.epoch))
        os.makedirs(self.epoch_dir)
        self.fs_path = os.path.join(self.epoch_dir, 'Data.fs')
        self.blob_dir = self.source.blob_dir and os.path.join(
            self.epoch_dir, 'blobs')
        self.fs = ZODB.FileStorage.FileStorage(self.fs_path,
                                               blob_dir=self.blob_dir)
        self.replica, self.position = ReplicaStorage(self.fs), 0

    def close(self):
        if self.fs is not None:
            self.fs.close()
            self.fs = None
            self.check_file(self.fs_path, self.blob_dir, self.position)
            shutil.rmtree(self.epoch_dir, ignore_errors=True)

    def run_case(self, number):
        case = self.generator.case(number, self.position)
        rng = random.Random('%s/%s/%d/chunks' % (
            self.generator.seed, case.lane, case.number))
        receiver = Receiver(self.replica.writer,
                            self.source.tid(self.position),
                            decoder=self.decoder,
                            check_checksums=self.check_checksums)
        frames = zrs.FrameDecoder(receiver.frame_received, MAX_FRAME)
        error = text = None
        try:
            for chunk in chunks(case.wire, rng):
                frames.feed(chunk)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            error = exc
        finally:
            receiver.abort()   # what connectionLost does
        if isinstance(error, zrs.ProtocolError):
            text = 'replication stream rejected: %s' % error
        elif isinstance(error, Exception):
            text = 'applying transaction %s failed: %s: %s' % (
                receiver.failed_tid.hex() if receiver.failed_tid else 'none',
                type(error).__name__, error)
            if traceback_from_protocol(
                    traceback.format_tb(error.__traceback__)):
                self.violation('log', 'the protocol module raised %s instead'
                               ' of ProtocolError: %s' % (
                                   type(error).__name__, str(error)[:200]),
                               case)
        elif error is not None:
            self.violation('daemon crashes', '%s escaped the receiver: %s'
                           % (type(error).__name__, error), case)
            text = str(error)
        self.judge(case, text)
        for record in self.logs:
            message = record.getMessage()
            if record.levelno >= logging.ERROR:
                self.violation('log', 'a second ERROR, from %s: %s' % (
                    record.name, message[:300]), case)
            elif not any(w in message for w in ALLOWED_WARNINGS):
                self.violation('log', 'unexpected WARNING from %s: %s' % (
                    record.name, message[:300]), case)
        self.logs.clear()
        self.check_state(case)

    def check_state(self, case):
        """Nothing of a transaction stays open, the position and the new
        transactions are right, no marker, no blob temporary, and the
        unpickler's objects are unchanged."""
        fs = self.fs
        left_open = (self.replica.writer._transaction is not None
                     or fs._transaction is not None)
        if left_open:
            self.violation('hangs', 'a transaction was left open after the '
                           'connection ended', case)
        if not fs._commit_lock.acquire(False):
            self.violation('hangs', 'the storage commit lock is still held',
                           case)
            left_open = True
        else:
            fs._commit_lock.release()
        if left_open:
            with contextlib.suppress(Exception):
                fs.tpc_abort(fs._transaction)
        self.advance(case, fs.lastTransaction(), lambda start: [
            copy_transaction(t) for t in fs.iterator(start)])
        self.check_leftovers(case)
        state = snapshot(self.objects)
        if state != self.state:
            self.violation('side effects', 'a message pickle changed objects'
                           ' of the unpickler: %s' % ', '.join(sorted(
                               '%s.%s' % key for key in state
                               if state[key] != self.state[key])), case)
            restore(self.objects, self.state)
