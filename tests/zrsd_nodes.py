"""zrsd processes in the three roles, a gated TCP proxy and comparisons.

- `ZrsdNode` writes a zrsd config for a primary (`replicate-to`), a replica
  (`replicate-from`) or a cascade replica (both), starts and stops the
  process, and waits until the node's ZEO `lastTransaction()` is a given tid.
- `GatedProxy` (`zczrs.Proxy`) sits in front of a ZRS port: it forwards a
  byte budget of the primary -> secondary stream, then holds it (the
  primary's data stays unread, so its streamer is paused by back-pressure)
  until `release()`; the held connection survives the release.
- `Writer` commits small transactions to a node from a thread (the load
  of failover, pack and drill scenarios).
- `assert_same_after_pack` compares a replica with a primary that packed
  after the replica received part of its history, transaction by
  transaction with `same_after_pack` (the torture's judge uses it too).
"""
import os
import random
import threading
import time

import transaction
import ZEO
import ZODB.FileStorage
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZODB.blob import Blob
from ZODB.POSException import POSKeyError
from ZODB.TimeStamp import TimeStamp

from support import BIN, Process, free_port, transactions, wait_until
from zczrs import Proxy

MB = 1024.0 * 1024.0

CONFIG = """\
<zeo>
  address 127.0.0.1:%(zeo_port)s
</zeo>
<zrs 1>
%(links)s  <filestorage>
    path %(fs_path)s
%(blob)s  </filestorage>
</zrs>
%(sections)s<eventlog>
  level INFO
  <logfile>
    path STDOUT
    format %(log_format)s
  </logfile>
</eventlog>
"""

LOG_FORMAT = '%(asctime)s %(levelname)s %(name)s %(message)s'


def config_text(zeo_port, fs_path, replicate_from=None, replicate_to=None,
                blob_dir=None, sections='', log_format=LOG_FORMAT,
                zrs_lines=''):
    """A test zrsd config with one `<zrs 1>` section.

    `replicate_from` / `replicate_to` are ports on 127.0.0.1: only `to` is a
    primary, only `from` a replica, both a cascade.  Secondaries reconnect
    quickly (0.1 s, at most 1 s) so restarts upstream do not slow tests.
    `sections` (e.g. a `<monitor>`) goes before the `<eventlog>`;
    `zrs_lines` (e.g. `  pack refuse\n`) into the `<zrs 1>` section.
    """
    return CONFIG % dict(zeo_port=zeo_port, fs_path=fs_path,
                         links=links(replicate_from, replicate_to) + zrs_lines,
                         blob=blob_line(blob_dir), sections=sections,
                         log_format=log_format)


def write_config(path, zeo_port, fs_path, replicate_from=None,
                 replicate_to=None, blob_dir=None, zrs_lines='',
                 log_format=LOG_FORMAT, sections=''):
    """Write `config_text(...)` to `path`; returns `path`."""
    with open(path, 'w') as f:
        f.write(config_text(zeo_port, fs_path, replicate_from, replicate_to,
                            blob_dir, sections=sections,
                            log_format=log_format, zrs_lines=zrs_lines))
    return path


def links(replicate_from=None, replicate_to=None):
    """The replicate-from/-to lines of a test `<zrs>` section (ports on
    127.0.0.1; secondaries reconnect quickly)."""
    text = ''
    if replicate_from is not None:
        text += ('  replicate-from 127.0.0.1:%d\n'
                 '  reconnect-delay 0.1\n'
                 '  max-reconnect-delay 1\n' % replicate_from)
    if replicate_to:
        text += '  replicate-to 127.0.0.1:%d\n' % replicate_to
    return text


def blob_line(blob_dir):
    """The blob-dir line of a test `<filestorage>`, if any."""
    return '    blob-dir %s\n' % blob_dir if blob_dir else ''


class ZrsdNode:
    """One zrsd process serving storage `1` from `directory/NAME.fs`.

    `upstream`: the ZRS port to replicate from (None for a primary);
    `serve`: also serve ZRS to secondaries on `repl_port` (always for a
    primary).  Ports are chosen once and kept across restarts; each start
    logs to its own file, `NAME-N.log`.
    """

    def __init__(self, directory, name, upstream=None, serve=None,
                 blobs=False, register=None):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.name = name
        self.upstream = upstream
        if serve is None:
            serve = upstream is None
        self.fs_path = os.path.join(self.directory, name + '.fs')
        self.blob_dir = (os.path.join(self.directory, name + '.blobs')
                         if blobs else None)
        self.config_path = os.path.join(self.directory, name + '.conf')
        self.zeo_port = free_port()
        self.repl_port = free_port() if serve else None
        self.register = register   # e.g. conftest's `processes`
        self.process = None
        self.starts = 0

    zrs_lines = ''  # more lines of its <zrs> section (config_text)
    env = None      # more environment variables of the process
    log_format = LOG_FORMAT  # e.g. `%(created).6f` stamps (the benchmark)
    sections = ''   # more sections of its config, e.g. a <monitor>

    @property
    def role(self):
        if self.upstream is None:
            return 'primary'
        return 'cascade' if self.repl_port else 'replica'

    @property
    def zeo_address(self):
        return ('127.0.0.1', self.zeo_port)

    @property
    def log_path(self):
        return os.path.join(self.directory, '%s-%d.log' % (
            self.name, self.starts))

    def write_config(self):
        """Write the config of the node's current role; returns its path
        (`start` writes it too; e.g. `zrsd-rewind` reads it unstarted)."""
        return write_config(self.config_path, self.zeo_port, self.fs_path,
                            replicate_from=self.upstream,
                            replicate_to=self.repl_port,
                            blob_dir=self.blob_dir,
                            zrs_lines=self.zrs_lines,
                            log_format=self.log_format,
                            sections=self.sections)

    def launch(self):
        """Start zrsd without waiting (an empty replica serves ZEO only
        once its first transaction arrived)."""
        assert not self.running()
        self.write_config()
        self.starts += 1
        env = dict(os.environ, **self.env) if self.env else None
        self.process = Process([os.path.join(BIN, 'zrsd'), '-C',
                                self.config_path], self.log_path, env=env)
        if self.register is not None:
            self.register(self.process)
        return self

    def start(self, timeout=60.0):
        """Start zrsd; return once it logs that it serves ZEO."""
        self.launch()
        self.process.wait_for_log(' over ZEO at ', timeout)
        if self.repl_port:
            self.process.wait_for_log('serving ZRS to secondaries', timeout)
        return self

    def stop(self, timeout=60.0):
        """SIGTERM; assert a clean exit (status 0)."""
        status = self.process.stop(timeout)
        assert status == 0, '%s exited with %s:\n%s' % (
            self.name, status, self.process.log())

    def close(self):
        if self.process is not None:
            self.process.close()

    def running(self):
        return self.process is not None and self.process.popen.poll() is None

    def check_alive(self):
        """True, or fail at once with the log if the process exited."""
        if not self.running():
            raise AssertionError('%s (%s) exited with %s:\n%s' % (
                self.name, self.role, self.process.popen.returncode,
                self.process.log()))
        return True

    def log(self):
        return self.process.log() if self.process is not None else ''

    def client(self, **kw):
        """A read-only ZEO ClientStorage of this node (unless told)."""
        kw.setdefault('read_only', True)
        return ZEO.client(self.zeo_address, **kw)

    def db(self, **kw):
        return ZEO.DB(self.zeo_address, **kw)

    def last_tid(self):
        """lastTransaction() as a ZEO client sees it."""
        storage = self.client()
        try:
            return storage.lastTransaction()
        finally:
            storage.close()

    def wait_for_tid(self, tid, timeout=120.0):
        """Wait until a ZEO client of this node sees `tid` as the last
        transaction (a connected client learns of commits through
        invalidations); fail fast if the process dies."""
        storage = self.client()
        try:
            wait_until(
                lambda: self.check_alive() and
                storage.lastTransaction() == tid,
                timeout, message='%s lastTransaction == %s' % (
                    self.name, tid.hex()))
        except AssertionError as exc:
            raise AssertionError('%s; it is %s' % (
                exc, storage.lastTransaction().hex())) from None
        finally:
            storage.close()

    def rss(self):
        """(VmRSS, VmHWM) of the process in bytes, or None once gone."""
        return process_memory(self.process.pid)


class Writer:
    """Commits small transactions to one node through ZEO, in a thread, as
    fast as the node takes them, until stopped or until a commit fails
    (the node stopped): `tids` are the commits it saw succeed, `error`
    the exception that ended it.  `pause()` returns once the writer is
    between two transactions; `resume()` lets it go on.  With a
    `blob_cache`, every fifth transaction also writes a blob.
    A subclass may commit other transactions (`_commit`); `db` is the
    writer's ZEO DB once its thread runs.
    """

    # A short wait: a commit fails soon after the node went away.
    wait_timeout = 1

    def __init__(self, node, name='writer', blob_cache=None, size=1000):
        self.node = node
        self.name = name
        self.blob_cache = blob_cache
        self.size = size
        self.tids = []
        self.error = None
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
        kw = {}
        if self.blob_cache:
            kw = dict(blob_dir=self.blob_cache, shared_blob_dir=False)
        try:
            db = self.db = ZEO.DB(self.node.zeo_address,
                                  wait_timeout=self.wait_timeout, **kw)
        except Exception as exc:
            self.error = exc
            return
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            while not self._stopping.is_set():
                with self._gate:
                    self._commit(tm, conn)
        except Exception as exc:
            self.error = exc
        finally:
            tm.abort()
            conn.close()
            db.close()

    def _commit(self, tm, conn):
        count = len(self.tids)
        tm.begin()
        root = conn.root()
        items = root.get(self.name)
        if items is None:
            items = root[self.name] = OOBTree()
        key = 'item-%02d' % (count % 40)
        if key not in items:
            items[key] = PersistentMapping()
        item = items[key]
        item['data'] = self._random.randbytes(self.size)
        item['count'] = count
        if self.blob_cache and count % 5 == 0:
            # Up to 70 KB: some cross the 64 KiB block boundary.
            blob_key = 'blob-%d' % (count % 3)
            data = self._random.randbytes(self._random.randint(0, 70000))
            if blob_key in items:
                with items[blob_key].open('w') as f:
                    f.write(data)
            else:
                items[blob_key] = Blob(data)
        tm.get().note('writer %s: %d' % (self.name, count))
        tm.commit()
        self.tids.append(item._p_serial)


def process_memory(pid):
    """(VmRSS, VmHWM) of `pid` in bytes from /proc, or None."""
    values = {}
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                key, _, rest = line.partition(':')
                if key in ('VmRSS', 'VmHWM'):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        return None
    if len(values) != 2:
        return None
    return values['VmRSS'], values['VmHWM']


class MemorySampler:
    """Samples a process's RSS in a thread until stopped (a measurement
    helper: nothing waits on it)."""

    def __init__(self, pid, interval=0.01):
        self.pid = pid
        self.interval = interval
        self.samples = []       # (monotonic time, rss)
        self.peak_hwm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='rss-sampler')

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self):
        memory = process_memory(self.pid)
        if memory is not None:
            self.samples.append((time.monotonic(), memory[0]))
            self.peak_hwm = max(self.peak_hwm, memory[1])

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)
        self._sample()

    @property
    def peak_rss(self):
        return max((rss for _, rss in self.samples), default=0)


# The gated proxy of these tests is zczrs.Proxy (hold_after, release).
GatedProxy = Proxy


def pack_stop_tid(pack_time):
    """The tid FileStorage packs up to for `pack(pack_time)` (inclusive):
    transactions with a tid above it are copied unchanged."""
    return TimeStamp(*time.gmtime(pack_time)[:5] + (pack_time % 60,)).raw()


def load_current(path):
    """{oid: (data, serial) or 'missing'} for every oid in the index of the
    FileStorage at `path` ('missing': creation undone)."""
    fs = ZODB.FileStorage.FileStorage(path, read_only=True)
    try:
        result = {}
        for oid in fs._index.keys():
            try:
                result[oid] = fs.load(oid)
            except POSKeyError:
                result[oid] = 'missing'
        return result
    finally:
        fs.close()


def same_after_pack(p, r, stop):
    """Whether the replica's transaction `r` agrees with the primary's `p`
    (`support.transactions` tuples of one tid) after the primary packed
    up to the tid `stop` (`pack_stop_tid`) and the replica did not.

    After the pack time: identical, except that where the primary's record
    has no back pointer the replica's may have one.  FileStorage's pack
    copies those transactions but turns a back pointer into a record it
    removed into the data itself (`fspack.PackCopier.copy`), while a
    replica that received the transaction before the pack keeps the
    pointer; the data compared are resolved, so they still agree.

    Up to the pack time: the same user, description and extension, and
    each of the primary's records (oid, tid, data) is the replica's last
    record of that oid in the transaction.  The pack keeps only reachable
    records, one position per oid, the last: a transaction may hold two
    records of one oid (ZEO stores a blob record twice at times, see
    `fspack.FileStoragePacker.copyDataRecords`), so comparing the lists
    in order would fail a correct replica that holds both.
    """
    if p[0] > stop:
        return p[:5] == r[:5] and len(p[5]) == len(r[5]) and all(
            a[:3] == b[:3] and a[3] in (b[3], None)
            for a, b in zip(p[5], r[5]))
    last = {record[0]: record[:3] for record in r[5]}
    return p[2:5] == r[2:5] and all(
        last.get(record[0]) == record[:3] for record in p[5])


def assert_same_after_pack(primary_path, replica_path, pack_time):
    """The replica agrees with a primary that was packed at `pack_time`
    after the replica had received (part of) the unpacked history.

    A pack rewrites the primary's transactions up to the pack time: it
    drops non-current and unreachable records (and transactions left
    empty), stores data inline instead of back pointers and marks the
    copies status 'p'.  A replica keeps what it received before the pack
    and gets the packed form only of what it asked for after it.  So:

    - there are no extra transactions after the pack time on either side,
      and each one agrees by `same_after_pack`;
    - every packed transaction of the primary exists in the replica and
      agrees by `same_after_pack`;
    - every oid in the primary's index loads the same data and serial from
      the replica.

    Returns (packed transactions compared, later transactions compared,
    current objects compared).
    """
    stop = pack_stop_tid(pack_time)
    primary = transactions(primary_path)
    replica = {t[0]: t for t in transactions(replica_path)}
    replica_after = sorted(tid for tid in replica if tid > stop)
    primary_after = [t for t in primary if t[0] > stop]
    assert [t[0] for t in primary_after] == replica_after, (
        'transactions after the pack time differ: primary %d, replica %d'
        % (len(primary_after), len(replica_after)))
    packed = [t for t in primary if t[0] <= stop]
    for p in primary:
        assert p[0] in replica, (
            'transaction %s missing on the replica' % p[0].hex())
        assert same_after_pack(p, replica[p[0]], stop), (
            'transaction %s differs' % p[0].hex())
    current = load_current(primary_path)
    replica_current = load_current(replica_path)
    for oid, state in current.items():
        assert replica_current.get(oid) == state, (
            'object %s differs' % oid.hex())
    return len(packed), len(primary_after), len(current)
