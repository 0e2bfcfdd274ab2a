"""The in-process layer: the same cases fed straight into
`zrsd.replica.receiver.Receiver` through `zrsd.protocol.FrameDecoder` (in
random chunks) over a real FileStorage, about a thousand cases per
second."""
import contextlib
import glob
import logging
import os
import random
import shutil
import traceback

import ZODB.FileStorage

from harness.history import copy_transaction
from zrsd import protocol as zrs
from zrsd.replica.receiver import Receiver
from zrsd.replica.storage import ReplicaStorage

from .cases import MAX_FRAME
from .judges import ALLOWED_WARNINGS, Lane, traceback_from_protocol

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
        return [data[i:i + 1] for i in range(len(data))]
    pieces, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, 9000)
        pieces.append(data[pos:pos + n])
        pos += n
    return pieces


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


class InProcessLane(Lane):
    """Cases fed to a `Receiver` over a real FileStorage, in this process."""

    side, renew = 'in-process', True

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

    def run(self, count):
        with captured_logs() as self.logs:
            super().run(count)

    def open(self):
        self.epoch += 1
        self.add('epochs')
        base = os.path.join(self.directory, '%s-%d' % (
            self.generator.lane, self.epoch))
        self.fs_path = base + '.fs'
        self.blob_dir = base + '.blobs' if self.source.blob_dir else None
        self.fs = ZODB.FileStorage.FileStorage(self.fs_path,
                                               blob_dir=self.blob_dir)
        self.replica, self.position = ReplicaStorage(self.fs), 0

    def close(self):
        if self.fs is None:
            return
        self.fs.close()
        self.fs = None
        self.check_file(self.fs_path, self.blob_dir, self.position)
        for path in glob.glob(glob.escape(self.fs_path) + '*'):
            os.remove(path)
        if self.blob_dir:
            shutil.rmtree(self.blob_dir, ignore_errors=True)

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
