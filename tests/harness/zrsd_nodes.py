"""zrsd nodes (`ZrsdNode`, `RunzeoNode`, `PlainZeoNode`), `Writer` (a
committing thread), memory sampling and blob helpers.
"""
import contextlib
import hashlib
import os
import random
import threading
import time

import ZEO
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.blob import Blob

from .process import (LOG_FORMAT, Node, config_text, free_port, wait_until,
                      zeo_config)
from .zczrs import commit_change, opened

MB = 1024.0 * 1024.0


def write_config(path, zeo_port, fs_path, **options):
    """Write `config_text(zeo_port, fs_path, **options)` to `path`."""
    with open(path, 'w') as f:
        f.write(config_text(zeo_port, fs_path, **options))
    return path


def ssl_lines(cert, key, ca, extra=''):
    """An `<ssl>` section for `zrs_lines` (mutual TLS)."""
    return ('  <ssl>\n    certificate %s\n    key %s\n    authenticate %s\n'
            '%s  </ssl>\n' % (cert, key, ca, extra))


class ZrsdNode(Node):
    """A zrsd process replicating from port `upstream` (None: a primary),
    serving ZRS on `repl_port` if `serve` (default: a primary), the monitor
    on `monitor_port` if `monitor`; `options` set the attributes below."""

    program = 'zrsd'
    zrs_lines = zeo_lines = sections = header = ''
    log_format = LOG_FORMAT
    log_file = 'STDOUT'
    log_level = 'INFO'
    copy_file = 'off'

    def __init__(self, directory, name, upstream=None, serve=None,
                 blobs=False, register=None, monitor=False, **options):
        super().__init__(directory, name, register)
        self.upstream = upstream
        serve = upstream is None if serve is None else serve
        self.blob_dir = (os.path.join(self.directory, name + '.blobs')
                         if blobs else None)
        self.repl_port = free_port() if serve else None
        self.monitor_port = free_port() if monitor else None
        for key, value in options.items():
            assert hasattr(self, key) and not callable(getattr(self, key)), key
            setattr(self, key, value)

    @property
    def role(self):
        if self.upstream is None:
            return 'primary'
        return 'cascade' if self.repl_port else 'replica'

    def config(self):
        """The config of the node's current role."""
        monitor = ('<monitor>\n  address 127.0.0.1:%d\n</monitor>\n'
                   % self.monitor_port if self.monitor_port else '')
        return config_text(
            self.zeo_port, self.fs_path, replicate_from=self.upstream,
            replicate_to=self.repl_port, blob_dir=self.blob_dir,
            sections=self.sections + monitor, **{
                key: getattr(self, key) for key in (
                    'zrs_lines', 'zeo_lines', 'log_format', 'log_file',
                    'log_level', 'header', 'copy_file')})

    def set_upstream(self, upstream):
        """From its next start, a replica of port `upstream` serving no ZRS,
        or (None) a primary serving ZRS on a new port."""
        self.upstream = upstream
        self.repl_port = free_port() if upstream is None else None
        return self

    def ready(self):
        """ZEO (an empty replica's only once its first transaction came:
        `launch` does not wait), ZRS if served, the monitor if any."""
        return ((' over ZEO at ',) +
                (('serving ZRS to secondaries',) if self.repl_port else ()) +
                (('monitoring at',) if self.monitor_port else ()))

    def commit(self, key, value='x'):
        """One transaction on the node's ZEO: root[key] = value; its tid."""
        return commit_change(self.zeo_address, key, value)


class RunzeoNode(ZrsdNode):
    """zrsd's `<zrs>` section inside plain ZEO: runzeo with `%import zrsd`."""

    header = '%import zrsd\n'
    program = 'runzeo'

    def ready(self):
        return ('listening on',)


class PlainZeoNode(Node):
    """Plain ZEO, no replication: runzeo serving `NAME.fs` as storage `1`
    (the benchmark's reference server)."""

    read_only = False

    def config(self):
        return zeo_config(self.zeo_port, self.fs_path)


class Writer:
    """Commits small transactions to a node from a thread until stopped or
    a commit fails: `tids` succeeded, `error` ended it.  `pause()` returns
    between two transactions.  With a `blob_cache`, every fifth writes a
    blob."""

    wait_timeout = 1    # a commit fails soon after the node went away

    def __init__(self, node, name='writer', blob_cache=None, size=1000):
        self.node, self.name, self.size = node, name, size
        self.blob_cache = blob_cache
        self.tids, self.error = [], None
        self._random = random.Random(name)
        self._gate = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='writer-' + name)

    def start(self):
        self._thread.start()
        return self

    def pause(self):
        self._gate.acquire()

    def resume(self):
        self._gate.release()

    def stop(self, timeout=60.0):
        self._stopping.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError('the writer does not stop')

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def commits(self):
        """How many commits succeeded so far."""
        return len(self.tids)

    def running(self):
        return self._thread.is_alive()

    def _run(self):
        kw = dict(blob_dir=self.blob_cache, shared_blob_dir=False) \
            if self.blob_cache else {}
        try:
            self.db = ZEO.DB(self.node.zeo_address,
                             wait_timeout=self.wait_timeout, **kw)
            with contextlib.closing(self.db), opened(self.db) as (tm, root):
                while not self._stopping.is_set():
                    with self._gate:
                        self._commit(tm, root._p_jar)   # (its connection)
        except Exception as exc:
            self.error = exc

    def _commit(self, tm, conn):
        count = len(self.tids)
        tm.begin()
        items = conn.root().setdefault(self.name, OOBTree())
        item = items.setdefault('item-%02d' % (count % 40),
                                PersistentMapping())
        item['data'] = self._random.randbytes(self.size)
        item['count'] = count
        if self.blob_cache and count % 5 == 0:
            # Up to 70 KB: some cross the 64 KiB block boundary.
            _set_blob(items, 'blob-%d' % (count % 3), self._random.randbytes(
                self._random.randint(0, 70000)))
        tm.get().note('writer %s: %d' % (self.name, count))
        tm.commit()
        self.tids.append(item._p_serial)


def process_memory(pid):
    """(VmRSS, VmHWM) of `pid` in bytes from /proc, or None."""
    try:
        with open('/proc/%d/status' % pid) as f:
            values = dict(line.partition(':')[::2] for line in f)
        return tuple(int(values[key].split()[0]) * 1024
                     for key in ('VmRSS', 'VmHWM'))
    except (OSError, ValueError, KeyError, IndexError):
        return None


class MemorySampler:
    """Samples a process's RSS in a thread until the `with` ends."""

    def __init__(self, pid, interval=0.01):
        self.pid, self.interval = pid, interval
        self.samples = []       # (monotonic time, rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='rss-sampler')

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while True:
            stopping = self._stop.is_set()
            memory = process_memory(self.pid)
            if memory is not None:
                self.samples.append((time.monotonic(), memory[0]))
            if stopping:
                return
            self._stop.wait(self.interval)

    @property
    def peak_rss(self):
        return max((rss for _, rss in self.samples), default=0)


def primary_and_replica(node, names=('primary', 'replica'), blobs=False):
    """A primary holding one commit and its replica, caught up, made by the
    `node` factory (tests/conftest.py): (primary, replica, the tid)."""
    primary = node(names[0], blobs=blobs).start()
    tid = primary.commit('k', 1)
    replica = node(names[1], upstream=primary.repl_port, blobs=blobs).start()
    replica.wait_for_tid(tid)
    return primary, replica, tid


def blob_db(node, cache_dir, **kw):
    """A ZEO DB of `node` with a private blob cache in `cache_dir`."""
    return ZEO.DB(node.zeo_address, blob_dir=str(cache_dir),
                  shared_blob_dir=False, **kw)


def wait_for_value(tm, root, key, value, node=None):
    """Wait until `root[key] == value` in a connection (`opened`'s), each
    poll in a new transaction; fail fast if `node` dies."""
    def seen():
        tm.begin()
        return (node is None or node.check_alive()) and root.get(key) == value
    wait_until(seen, message='root[%r] == %r' % (key, value))


def commit_blobs(db, blobs, note, **extension):
    """One transaction setting (or rewriting) root[name] = Blob(data) for
    {name: data}, with `note` and `extension`; returns its tid."""
    with opened(db) as (tm, root):
        for name, data in blobs.items():
            _set_blob(root, name, data)
        tm.get().note(note)
        for key, value in extension.items():
            tm.get().setExtendedInfo(key, value)
        tm.commit()
    return db.lastTransaction()


def _set_blob(mapping, key, data):
    """mapping[key] = a Blob of `data`, or its existing blob rewritten."""
    if key in mapping:
        with mapping[key].open('w') as f:
            f.write(data)
    else:
        mapping[key] = Blob(data)


def undo_last(db):
    """Undo the last transaction of `db`; returns the undo's tid."""
    with opened(db) as (tm, root):
        db.undo(db.undoLog(0, 1)[0]['id'], tm.get())
        tm.get().note('undo')
        tm.commit()
    return db.lastTransaction()


def current_blobs(db, names):
    """{name: content} of the blobs root[name], read through ZODB."""
    result = {}
    with opened(db) as (tm, root):
        for name in names:
            with root[name].open('r') as f:
                result[name] = f.read()
    return result


def sha256_file(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def blob_files(blob_dir):
    """{relative path: sha256} of a server's blob files, but `tmp/`."""
    result = {}
    for directory, dirs, files in os.walk(blob_dir):
        if directory == blob_dir and 'tmp' in dirs:
            dirs.remove('tmp')
        for name in files:
            path = os.path.join(directory, name)
            result[os.path.relpath(path, blob_dir)] = sha256_file(path)
    return result
