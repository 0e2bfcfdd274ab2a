#!/usr/bin/env python
"""The zrsd torture suite: replication under kills, broken links, packs
and a full disk, checked transaction by transaction.

    .venv/bin/python scripts/torture.py            # short run (~1 min)
    .venv/bin/python scripts/torture.py --long     # long run (~6 min)
    .venv/bin/python scripts/torture.py --only pack --seed 7

Everything runs on 127.0.0.1 with real components: `zrsd` processes
started from config files (a primary with a blob directory, replicas),
a writer thread committing continuously through a ZEO client of the
primary (small random transactions of 1-4 objects, some blobs of 0 bytes
to 400 KB, including the 64 KiB block boundaries, occasional undos,
transaction users, notes and extension data), and the chaos of each
scenario.  The random choices (which moment to kill, how
long to stall, ...) come from `--seed`; the moments themselves are real
time, so two runs with one seed differ in where the kills land.

Scenarios (`--only NAME`; counts are short / `--long`):

kill-replica (3 / 50 cycles)
    `kill -9` of a replica, then restart, at a random moment of one of
    three phases, in rotation: start-up (opening the file, rebuilding the
    index after the previous kill), catch-up (the writer bursts while the
    replica is down, so it restarts behind; the kill lands while the
    backlog streams in) and live (caught up, the writer committing).
    Checks: the final replica file equals the primary's.
links (10 / 200 cuts, 1 / 20 stalls, 1 / 10 throttles)
    The replica connects through `tests/chaos.ChaosProxy`.  The proxy cuts
    the link (FIN or RST, at a random moment of each connection's life),
    stalls it (forwards nothing for 0.2-2 s, sometimes cut while stalled)
    and throttles it (20 KB/s to 500 KB/s for a while), with write bursts
    in between.  Checks: the final files are equal; no checksum or
    protocol error is ever logged.
primary-restart (1 / 10 restarts)
    `kill -9` and restart (same ports) of the primary while a cascade
    replica (`replicate-from` + `replicate-to`) and a replica of the
    cascade are connected and the writer commits (its ZEO client
    reconnects; commits that fail meanwhile are retried).  Checks: both
    replicas end equal to the primary.
pack (1 / 3 packs)
    A ZEO client packs the primary (blobs too) while replica R1 catches up
    on a backlog (several MB of large blobs, then small transactions; the
    pack time lies among those) through a proxy throttled to 1 MB/s, so
    that the pack lands mid-stream, and the writer commits; after the
    last pack a fresh replica R2 replicates from scratch.  See "What
    equality means after a pack" below.
disk-full (1 / 3 episodes)
    A replica whose storage lives on a size-limited filesystem; the
    writer fills it.  Checks: a clear ERROR naming the disk-full error is
    logged (and the process keeps running and retrying); killed while the
    disk is full, its file opens and is a prefix of the primary's history;
    once space is back (the filesystem grows) replication catches up, and
    the final files are equal.  Episodes alternate: data file and blobs on
    the small filesystem, or only the data file; and recovering while
    running, or killed while full and restarted (then space comes back).
    Variant `tmpfs`: a tmpfs mounted with `size=` (needs root / mount
    permission) and grown with `mount -o remount,size=`.  Variant
    `injected` (when mounting is not allowed, or `--disk-full injected`):
    the replica runs with a `sitecustomize` (on PYTHONPATH, generated in
    the work directory) that wraps the writable FileStorage's data-file
    object so that writing past a byte quota writes what fits and raises
    `OSError(ENOSPC)`, as a full disk does; the quota lives in a file and
    is raised to "free space".  It covers only the data file (blob files
    are written normally).  The variant that ran is printed.

Every scenario ends the same way: the writer stops, each replica's ZEO
`lastTransaction()` reaches the primary's, every process gets SIGTERM (and
must exit 0), and the files are compared transaction by transaction: tid,
status, user, description, extension, and each record's oid, tid, data and
data_txn; for every blob record, the blob files (present on both sides,
same bytes).  Every zrsd log is then scanned: any ERROR or CRITICAL line
or traceback that the scenario does not cause on purpose (the disk-full
errors) is a violation, as is a process that exits without being told to
(a crash the torture did not cause).

What equality means after a pack
--------------------------------
A pack at time T rewrites the primary's history up to T (non-current and
unreachable records and their blob files go, transactions left empty
vanish, the rest is copied with status 'p' and data instead of back
pointers) and copies what follows T, except that a back pointer into a
removed record becomes the data itself.  A replica is never packed: it
keeps what it received before the pack and receives the rest as the
primary has it when it asks.  So with T the newest pack time:

- R2, started after the last pack, must equal the primary exactly (the
  same comparison as every other scenario);
- R1, replicating across the packs, must have exactly the primary's
  transactions after T, identical except that where the primary's record
  has no back pointer the replica's may have one (to a record with the
  same data: the data compared is the resolved data);
- each of the primary's transactions up to T exists in R1 with the same
  user, description and extension, and its records (oid, tid, data) are
  among R1's records of that transaction;
- R1 holds no transaction the writer did not commit (its extra
  transactions up to T are ones the pack removed: the writer's list of
  committed tids is the witness);
- every object in the primary's index loads the same data and serial
  from R1, and every blob file of the primary is in R1, same bytes;
- every blob record R1 holds has its blob file (a record the pack
  removed from the primary included: R1 must either have received it
  whole before the pack, or not at all).

Comparing R1 with a copy of the primary taken just before the pack would
be simpler but is not sound: R1 is mid-catch-up when the pack runs and
may legitimately receive packed transactions.  These rules accept
exactly what a correct replica may hold and nothing else.

The summary lists scenarios and cycles run, transactions compared,
mismatches, crashes and unexpected errors; the exit status is 1 on any
violation, 0 otherwise.  The work directory (configs, logs, files) is
removed after a clean run and kept otherwise (`--keep` keeps it always).
"""
import argparse
import collections
import errno
import filecmp
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import transaction  # noqa: E402
import ZEO  # noqa: E402
import ZODB.blob  # noqa: E402
import ZODB.FileStorage  # noqa: E402
from BTrees.OOBTree import OOBTree  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402
from ZEO.Exceptions import ClientDisconnected  # noqa: E402
from ZODB.POSException import POSKeyError  # noqa: E402
from ZODB.TimeStamp import TimeStamp  # noqa: E402
from ZODB.utils import z64  # noqa: E402

from chaos import ChaosProxy  # noqa: E402
from zrsd.storage import last_committed_tid  # noqa: E402
from support import BIN, Process, free_port  # noqa: E402
from zrsd_nodes import config_text  # noqa: E402

SCENARIOS = ('kill-replica', 'links', 'primary-restart', 'pack', 'disk-full')

COUNTS = {
    'short': dict(replica_kills=3, cuts=10, stalls=1, throttles=1,
                  primary_restarts=1, packs=1, disk_full=1,
                  initial_commits=300),
    'long': dict(replica_kills=50, cuts=200, stalls=20, throttles=10,
                 primary_restarts=10, packs=3, disk_full=3,
                 initial_commits=2000),
}

WAIT = 180.0     # seconds before a wait counts as a hang (a violation)

LOG_LINE = re.compile(
    r'^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(,\d+)? (?P<level>[A-Z]+) ')
DISK_FULL = re.compile(r'No space left on device|ENOSPC|\[Errno 28\]')
# The ERROR line zrsd documents for a transaction it cannot apply.
DISK_FULL_ERROR = (r'(?m)^.* ERROR .*applying transaction \S+ failed: '
                   r'.*(%s)' % DISK_FULL.pattern)


logger = logging.getLogger('torture')

# ERROR entries that the torture's own ZEO clients cause anywhere: ZEO's
# server logs a client that closes its connection with a reset as an
# error (the pack client, the clients that wait for the replicas).
COMMON_ALLOWED_ERRORS = (
    r'ERROR ZEO\.asyncio\.server Disconnected ConnectionResetError',
)


class ScenarioFailed(Exception):
    """A scenario could not go on (a hang, a failed start)."""


# -- the report -----------------------------------------------------------------

class Report:
    """What the run did and every violation found."""

    def __init__(self):
        self.scenarios = []            # (name, seconds, outcome)
        self.counts = collections.Counter()
        self.compared = 0
        self.blobs_compared = 0
        self.mismatches = []
        self.crashes = []
        self.errors = []               # unexpected ERROR/CRITICAL lines
        self.failures = []             # scenarios that could not finish
        self.notes = []

    def violations(self):
        return (len(self.mismatches) + len(self.crashes) + len(self.errors)
                + len(self.failures))

    def say(self, text):
        print(text, flush=True)

    def summary(self, seconds, workdir):
        lines = ['', '==== zrsd torture summary ====']
        for name, took, outcome in self.scenarios:
            lines.append('  %-16s %6.1fs  %s' % (name, took, outcome))
        lines.append('  cycles:')
        for key in sorted(self.counts):
            lines.append('    %-34s %d' % (key, self.counts[key]))
        for note in self.notes:
            lines.append('  note: %s' % note)
        lines.append('  transactions compared:   %d' % self.compared)
        lines.append('  blob files compared:     %d' % self.blobs_compared)
        lines.append('  mismatches:              %d' % len(self.mismatches))
        lines.extend('    ' + m for m in self.mismatches[:30])
        lines.append('  crashes (not torture):   %d' % len(self.crashes))
        lines.extend('    ' + c for c in self.crashes[:30])
        lines.append('  unexpected log errors:   %d' % len(self.errors))
        lines.extend('    ' + e for e in self.errors[:30])
        lines.append('  scenario failures:       %d' % len(self.failures))
        lines.extend('    ' + f for f in self.failures)
        lines.append('  time: %.1fs; work directory: %s' % (seconds, workdir))
        verdict = 'CLEAN' if not self.violations() else (
            'FAILED: %d violation(s)' % self.violations())
        lines.append('  result: %s' % verdict)
        return '\n'.join(lines)


# -- zrsd processes -----------------------------------------------------------

MONITOR = '<monitor>\n  address 127.0.0.1:%d\n</monitor>\n'


class Zrsd:
    """One zrsd process serving storage `1`, restartable on the same ports.

    A primary has no `upstream`; a replica replicates from the ZRS port
    `upstream`; `serve=True` also serves ZRS (a cascade).  Each start logs
    to `NAME-N.log`.  The scenario's `guard` notices an exit nobody asked
    for.
    """

    def __init__(self, directory, name, upstream=None, serve=None,
                 blobs=True, data_dir=None, blob_parent=None, env=None):
        self.directory = directory
        self.name = name
        self.upstream = upstream
        if serve is None:
            serve = upstream is None
        data_dir = data_dir or directory
        self.fs_path = os.path.join(data_dir, name + '.fs')
        self.blob_dir = (os.path.join(blob_parent or data_dir,
                                      name + '.blobs') if blobs else None)
        self.config_path = os.path.join(directory, name + '.conf')
        self.zeo_port = free_port()
        self.repl_port = free_port() if serve else None
        self.monitor_port = free_port()
        self.env = env
        self.process = None
        self.starts = 0
        self.logs = []
        self.expected_exit = True

    @property
    def role(self):
        if self.upstream is None:
            return 'primary'
        return 'cascade' if self.repl_port else 'replica'

    @property
    def zeo_address(self):
        return ('127.0.0.1', self.zeo_port)

    def write_config(self):
        with open(self.config_path, 'w') as f:
            f.write(config_text(
                self.zeo_port, self.fs_path, self.upstream, self.repl_port,
                self.blob_dir, sections=MONITOR % self.monitor_port))

    def start(self, wait=None):
        """Start zrsd.  A primary waits until it serves ZEO and ZRS; a
        replica returns at once unless `wait` is True (then it waits until
        ZEO is served, i.e. the replica holds data)."""
        assert not self.running()
        self.write_config()
        self.starts += 1
        log_path = os.path.join(self.directory, '%s-%d.log' % (
            self.name, self.starts))
        self.logs.append(log_path)
        env = None
        if self.env:
            env = dict(os.environ)
            env.update(self.env)
        self.process = Process([os.path.join(BIN, 'zrsd'), '-C',
                                self.config_path], log_path, env=env)
        self.expected_exit = False
        if wait is None:
            wait = self.role == 'primary'
        if wait:
            self.process.wait_for_log(' over ZEO at ', WAIT)
            if self.repl_port:
                self.process.wait_for_log('serving ZRS to secondaries', WAIT)
        return self

    def running(self):
        return self.process is not None and self.process.popen.poll() is None

    def unexpected_exit(self):
        """The exit status if the process exited without being told to."""
        if self.process is None or self.expected_exit:
            return None
        status = self.process.popen.poll()
        if status is None:
            return None
        self.expected_exit = True
        return status

    def kill(self):
        """SIGKILL (no clean-up in zrsd) and reap."""
        self.expected_exit = True
        self.process.kill()

    def stop(self):
        """SIGTERM; returns the exit status."""
        self.expected_exit = True
        return self.process.stop(WAIT)

    def close(self):
        if self.process is not None:
            self.expected_exit = True
            self.process.close()

    def log_text(self, index=-1):
        if not self.logs:
            return ''
        with open(self.logs[index], 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def status(self):
        """This node's entry in /status, or None (not serving yet)."""
        try:
            with urllib.request.urlopen('http://127.0.0.1:%d/status'
                                        % self.monitor_port,
                                        timeout=10) as response:
                return json.load(response)['storages'][0]
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def last_tid(self):
        """The last tid from /status, or None."""
        status = self.status()
        if status is None:
            return None
        return bytes.fromhex(status['last_transaction'])


# -- the writer ---------------------------------------------------------------

USERS = ['alice', 'bob', 'zoë', 'cron']
NOTES = ['edit', 'import', 'café ✓', 'nightly job', '']


def blob_size(rng, heavy=False):
    """Blob sizes: tiny, medium, on the 64 KiB block boundaries, large."""
    r = rng.random()
    if heavy:
        return rng.randint(100000, 400000)
    if r < 0.4:
        return rng.randint(0, 2000)
    if r < 0.8:
        return rng.randint(2000, 40000)
    if r < 0.95:
        return rng.choice([65535, 65536, 65537, 131072, 131073])
    return rng.randint(100000, 400000)


class Writer:
    """Commits small random transactions to the primary through ZEO, in a
    thread, until stopped.

    `burst` drops the pacing (as fast as the primary commits); `heavy`
    makes most transactions carry a large blob and bigger records (to
    fill a disk).  Failed commits (the primary went away, a conflict
    after a reconnect, an undo that cannot be done, or ZODB's "a different
    object already has the same oid" after a commit that failed in its
    second phase because the primary died) are aborted, counted, logged
    to `torture-clients.log` and not retried as such: the next
    transaction is a new random one.
    `tids` lists every tid known to be committed; `uncertain` counts
    commits whose outcome is unknown (the connection broke during the
    commit).
    """

    def __init__(self, address, blob_dir, rng, rate=150.0):
        self.address = address
        self.blob_dir = blob_dir
        self.rng = rng
        self.rate = rate
        self.burst = False
        self.heavy = False
        self.commits = 0
        self.undos = 0
        self.blob_commits = 0
        self.uncertain = 0
        self.errors = collections.Counter()
        self.tids = []
        self.last_tid = z64
        self.initial_tid = None
        self.failure = None
        self._stopping = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._paused = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name='torture-writer')

    def start(self):
        self._thread.start()
        if not self._ready.wait(WAIT) or self.failure:
            raise ScenarioFailed('the writer did not start: %s'
                                 % self.failure)
        return self

    def pause(self):
        """Return once the writer sits between transactions."""
        self._resume.clear()
        if not self._paused.wait(WAIT) and self._thread.is_alive():
            raise ScenarioFailed('the writer does not pause')

    def resume(self):
        self._paused.clear()
        self._resume.set()

    def stop(self):
        self._stopping.set()
        self._resume.set()
        self._thread.join(WAIT)

    def alive(self):
        return self._thread.is_alive()

    def _run(self):
        try:
            self.db = ZEO.DB(self.address, blob_dir=self.blob_dir,
                             shared_blob_dir=False, wait_timeout=WAIT)
        except Exception:
            self.failure = traceback.format_exc()
            self._ready.set()
            return
        tm = transaction.TransactionManager()
        conn = self.db.open(tm)
        try:
            self.initial_tid = self.db.lastTransaction()
            self._setup(tm, conn)
            self._ready.set()
            while not self._stopping.is_set():
                if not self._resume.is_set():
                    self._paused.set()
                    self._resume.wait()
                    continue
                self._one(tm, conn)
                if not self.burst and not self.heavy:
                    self._stopping.wait(self.rng.expovariate(self.rate))
        except Exception:
            self.failure = traceback.format_exc()
        finally:
            self._ready.set()
            self._paused.set()
            tm.abort()
            conn.close()
            self.db.close()

    def _setup(self, tm, conn):
        while not self._stopping.is_set():
            try:
                tm.begin()
                root = conn.root()
                if 'items' not in root:
                    root['items'] = OOBTree()
                    root['blobs'] = OOBTree()
                    tm.get().note('torture: set up')
                    tm.commit()
                    self._committed()
                else:
                    tm.abort()
                return
            except Exception as exc:
                self._failed(tm, exc)

    def _committed(self):
        tid = self.db.lastTransaction()
        self.tids.append(tid)
        self.last_tid = tid
        self.commits += 1

    def _failed(self, tm, exc):
        tm.abort()
        self.errors[type(exc).__name__] += 1
        logger.warning('writer: commit failed: %s: %s', type(exc).__name__,
                       exc, exc_info=not isinstance(exc, ClientDisconnected))
        if isinstance(exc, ClientDisconnected):
            while not (self._stopping.is_set()
                       or self.db.storage.is_connected()):
                self._stopping.wait(0.02)

    def _one(self, tm, conn):
        rng = self.rng
        in_commit = False
        has_blob = False
        try:
            tm.begin()
            txn = tm.get()
            root = conn.root()
            undo = self.commits > 20 and rng.random() < 0.02
            if undo:
                info = self.db.undoLog(0, 1)
                if info:
                    self.db.undo(info[0]['id'], txn)
                    txn.note('torture: undo')
            else:
                has_blob = self._change(root, rng)
                if rng.random() < 0.3:
                    txn.setUser(rng.choice(USERS))
                    txn.note(rng.choice(NOTES))
                    txn.setExtendedInfo('n', self.commits)
                    if rng.random() < 0.3:
                        # (No datetime here: ZEO's server refuses to
                        # unpickle one in a client's extension.)
                        txn.setExtendedInfo('meta', {
                            'tags': ['a', str(self.commits)],
                            'ratio': rng.random(), 'none': None})
            in_commit = True
            tm.commit()
            self._committed()
            if undo:
                self.undos += 1
            if has_blob:
                self.blob_commits += 1
        except Exception as exc:
            if in_commit and isinstance(exc, ClientDisconnected):
                self.uncertain += 1
            self._failed(tm, exc)

    def _change(self, root, rng):
        """Change 1-4 objects and maybe a blob; True if a blob."""
        items, blobs = root['items'], root['blobs']
        for _ in range(rng.randint(1, 4)):
            size = (rng.randint(5000, 30000) if self.heavy
                    else rng.randint(10, 1500))
            # (Not len(items): an OOBTree counts by walking its buckets.)
            if not items or items.maxKey() < 40 or rng.random() < 0.3:
                key = (items.maxKey() + 1) if items else 0
                items[key] = PersistentMapping(payload=rng.randbytes(size))
            else:
                try:
                    key = items.minKey(rng.randrange(items.maxKey() + 1))
                except ValueError:
                    key = items.maxKey()
                items[key]['payload'] = rng.randbytes(size)
        if rng.random() < (0.7 if self.heavy else 0.08):
            key = rng.randrange(30)
            data = rng.randbytes(blob_size(rng, self.heavy))
            if key in blobs and rng.random() < 0.5:
                with blobs[key].open('w') as f:
                    f.write(data)
            else:
                blobs[key] = ZODB.blob.Blob(data)
            return True
        return False


# -- comparisons --------------------------------------------------------------

def history(path):
    """Yield each transaction of the FileStorage at `path` (opened
    read-only) as (tid, status, user, description, extension, records),
    records a list of (oid, tid, data, data_txn)."""
    fs = ZODB.FileStorage.FileStorage(path, read_only=True)
    try:
        for txn in fs.iterator():
            yield (txn.tid, txn.status, txn.user, txn.description,
                   dict(txn.extension),
                   [(r.oid, r.tid, r.data, r.data_txn) for r in txn])
    finally:
        fs.close()


def describe(tid):
    return tid.hex()


def differences(p, r):
    """What differs between two transaction tuples (for the report)."""
    names = ('tid', 'status', 'user', 'description', 'extension')
    out = [name for name, a, b in zip(names, p, r) if a != b]
    precs, rrecs = p[5], r[5]
    if len(precs) != len(rrecs):
        out.append('%d records vs %d' % (len(precs), len(rrecs)))
    else:
        for a, b in zip(precs, rrecs):
            if a != b:
                fields = [n for n, x, y in zip(
                    ('oid', 'tid', 'data', 'data_txn'), a, b) if x != y]
                out.append('record %s: %s' % (a[0].hex(), ','.join(fields)))
                break
    return '; '.join(out)


class BlobCheck:
    """Compares the blob files of blob records on both sides."""

    def __init__(self, primary_dir, replica_dir):
        self.primary = ZODB.blob.FilesystemHelper(primary_dir)
        self.replica = ZODB.blob.FilesystemHelper(replica_dir)
        self.compared = 0

    def check(self, oid, tid, data, strict=True):
        """None, or what is wrong with the blob files of (oid, tid)."""
        if not data or not ZODB.blob.is_blob_record(data):
            return None
        p = self.primary.getBlobFilename(oid, tid)
        r = self.replica.getBlobFilename(oid, tid)
        p_exists, r_exists = os.path.exists(p), os.path.exists(r)
        if p_exists and not r_exists:
            return 'blob file of %s at %s missing on the replica' % (
                oid.hex(), tid.hex())
        if r_exists and not p_exists:
            return ('blob file of %s at %s on the replica only' % (
                oid.hex(), tid.hex())) if strict else None
        if p_exists:
            self.compared += 1
            if not filecmp.cmp(p, r, shallow=False):
                return 'blob file of %s at %s differs' % (oid.hex(),
                                                          tid.hex())
        return None


def compare_exact(primary, replica, prefix=False, primary_path=None,
                  replica_path=None):
    """Compare two nodes' files; returns (transactions compared, blob
    files compared, mismatch descriptions).

    With `prefix`, the replica may stop early: the primary's transactions
    after the replica's last one are not missing.
    """
    ppath = primary_path or primary.fs_path
    rpath = replica_path or replica.fs_path
    blobs = (BlobCheck(primary.blob_dir, replica.blob_dir)
             if primary.blob_dir and replica.blob_dir else None)
    mismatches = []
    compared = 0
    label = replica.name
    p_iter, r_iter = history(ppath), history(rpath)
    p, r = next(p_iter, None), next(r_iter, None)
    while p is not None or r is not None:
        if r is None or (p is not None and p[0] < r[0]):
            if not prefix or r is not None:
                mismatches.append('%s: transaction %s missing' % (
                    label, describe(p[0])))
            elif prefix:
                break
            p = next(p_iter, None)
        elif p is None or r[0] < p[0]:
            mismatches.append('%s: transaction %s not on the primary' % (
                label, describe(r[0])))
            r = next(r_iter, None)
        else:
            compared += 1
            if p != r:
                mismatches.append('%s: transaction %s differs: %s' % (
                    label, describe(p[0]), differences(p, r)))
            elif blobs is not None:
                for oid, tid, data, _ in p[5]:
                    problem = blobs.check(oid, tid, data)
                    if problem:
                        mismatches.append('%s: %s' % (label, problem))
            p, r = next(p_iter, None), next(r_iter, None)
    p_iter.close()
    r_iter.close()
    return compared, blobs.compared if blobs else 0, mismatches


def pack_stop_tid(pack_time):
    """The tid FileStorage packs up to for `pack(pack_time)`."""
    return TimeStamp(*time.gmtime(pack_time)[:5] + (pack_time % 60,)).raw()


def current_states(path):
    """{oid: (data, serial) or None (creation undone)} of every oid in the
    index of the FileStorage at `path`."""
    fs = ZODB.FileStorage.FileStorage(path, read_only=True)
    try:
        result = {}
        for oid in fs._index.keys():
            try:
                result[oid] = fs.load(oid)
            except POSKeyError:
                result[oid] = None
        return result
    finally:
        fs.close()


def compare_after_pack(primary, replica, stop, witness):
    """R1's rules of "What equality means after a pack" (module
    docstring).  `stop` is the newest pack's stop tid, `witness` the set of
    tids the writer may have committed (None: unknown).  Returns
    (transactions compared, blob files compared, mismatches, a line about
    what the replica holds)."""
    label = replica.name
    mismatches = []
    blobs = BlobCheck(primary.blob_dir, replica.blob_dir)
    primary_txns = list(history(primary.fs_path))
    replica_txns = {t[0]: t for t in history(replica.fs_path)}
    primary_tids = {t[0] for t in primary_txns}
    compared = 0
    for p in primary_txns:
        tid = p[0]
        r = replica_txns.get(tid)
        if r is None:
            mismatches.append('%s: transaction %s missing' % (
                label, describe(tid)))
            continue
        compared += 1
        if tid > stop:
            same = p[:5] == r[:5] and len(p[5]) == len(r[5]) and all(
                a[:3] == b[:3] and (a[3] == b[3] or a[3] is None)
                for a, b in zip(p[5], r[5]))
        else:
            replica_records = {rec[0]: rec[:3] for rec in r[5]}
            same = p[2:5] == r[2:5] and all(
                replica_records.get(rec[0]) == rec[:3] for rec in p[5])
        if not same:
            mismatches.append('%s: transaction %s differs (%s the pack '
                              'time): %s' % (label, describe(tid),
                                             'after' if tid > stop
                                             else 'up to',
                                             differences(p, r)))
            continue
        for oid, rtid, data, _ in p[5]:
            problem = blobs.check(oid, rtid, data, strict=False)
            if problem:
                mismatches.append('%s: %s' % (label, problem))
    for tid in sorted(replica_txns):
        if tid in primary_tids:
            continue
        if tid > stop:
            mismatches.append('%s: transaction %s after the pack time is '
                              'not on the primary' % (label, describe(tid)))
        elif witness is not None and tid not in witness:
            mismatches.append('%s: transaction %s was never committed by '
                              'the writer' % (label, describe(tid)))
    # A record the primary still has is compared above; one the pack
    # removed must still be whole on the replica: its blob file too.
    primary_records = {(rec[0], rec[1]) for t in primary_txns
                       for rec in t[5]}
    # (A transaction may hold two records of one oid: ZEO stores a blob
    # record twice at times.)
    for oid, rtid in sorted({
            (oid, rtid) for tid in replica_txns
            for oid, rtid, data, _ in replica_txns[tid][5]
            if (oid, rtid) not in primary_records
            and data and ZODB.blob.is_blob_record(data)}):
        if not os.path.exists(blobs.replica.getBlobFilename(oid, rtid)):
            mismatches.append(
                '%s: blob record of %s at %s has no blob file' % (
                    label, oid.hex(), rtid.hex()))
    extra = len(set(replica_txns) - primary_tids)
    packed_form = sum(1 for t in replica_txns.values() if t[1] == 'p')
    details = ('%s holds %d transactions: %d that the pack removed from the '
               'primary, %d received in packed form' % (
                   label, len(replica_txns), extra, packed_form))
    primary_current = current_states(primary.fs_path)
    replica_current = current_states(replica.fs_path)
    for oid, state in primary_current.items():
        if replica_current.get(oid, 'absent') != state:
            mismatches.append('%s: current state of object %s differs' % (
                label, oid.hex()))
    return compared, blobs.compared, mismatches, details


# -- disk-full variants -------------------------------------------------------

SITECUSTOMIZE = '''\
"""Written by zrsd's torture suite (scripts/torture.py), disk-full
variant `injected`: the writable FileStorage's data file refuses to grow
past the byte quota in $ZRSD_TORTURE_QUOTA_FILE, as a full disk does."""
import errno
import os

_QUOTA_FILE = os.environ.get('ZRSD_TORTURE_QUOTA_FILE')


class _QuotaFile:
    def __init__(self, file, quota_file):
        self._file = file
        self._quota_file = quota_file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def write(self, data):
        with open(self._quota_file) as f:
            quota = int(f.read())
        pos = self._file.tell()
        if pos + len(data) > quota:
            fits = max(0, quota - pos)
            if fits:
                self._file.write(bytes(data[:fits]))
            raise OSError(errno.ENOSPC, 'No space left on device '
                          '(injected by the zrsd torture suite)')
        return self._file.write(data)


if _QUOTA_FILE:
    from ZODB.FileStorage.FileStorage import FileStorage as _FileStorage

    _original_init = _FileStorage.__init__

    def _init(self, *args, **kw):
        _original_init(self, *args, **kw)
        if not self._is_read_only:
            self._file = _QuotaFile(self._file, _QUOTA_FILE)

    _FileStorage.__init__ = _init
'''


class TmpfsSpace:
    """A tmpfs of limited size (variant `tmpfs`)."""

    variant = 'tmpfs'
    env = None

    def __init__(self, directory):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self._mount('size=%d' % (1 << 30), 'tmpfs', directory,
                    ['-t', 'tmpfs'])
        self.mounted = True

    @staticmethod
    def _mount(options, *args_and_extra):
        *args, extra = args_and_extra
        done = subprocess.run(['mount'] + extra + ['-o', options] + args,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
        if done.returncode:
            raise OSError(errno.EPERM, 'mount %s: %s' % (
                options, done.stdout.decode('utf-8', 'replace').strip()))

    def used(self):
        st = os.statvfs(self.directory)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def limit(self, size):
        size = -(-size // 4096) * 4096
        self._mount('remount,size=%d' % size, self.directory, [])

    def grow(self):
        self._mount('remount,size=%d' % (1 << 30), self.directory, [])

    def close(self):
        if self.mounted:
            done = subprocess.run(['umount', self.directory],
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
            if done.returncode:
                subprocess.run(['umount', '-l', self.directory])
            self.mounted = False


class InjectedSpace:
    """A byte quota on the replica's data file (variant `injected`)."""

    variant = 'injected'

    def __init__(self, directory, fs_path):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.fs_path = fs_path
        site = os.path.join(directory, 'site')
        os.makedirs(site, exist_ok=True)
        with open(os.path.join(site, 'sitecustomize.py'), 'w') as f:
            f.write(SITECUSTOMIZE)
        self.quota_file = os.path.join(directory, 'quota')
        self.grow()
        self.env = {'PYTHONPATH': site,
                    'ZRSD_TORTURE_QUOTA_FILE': self.quota_file}

    def used(self):
        try:
            return os.path.getsize(self.fs_path)
        except FileNotFoundError:
            return 0

    def limit(self, size):
        tmp = self.quota_file + '.tmp'
        with open(tmp, 'w') as f:
            f.write('%d\n' % size)
        os.replace(tmp, self.quota_file)

    def grow(self):
        self.limit(1 << 62)

    def close(self):
        pass


# -- scenarios ------------------------------------------------------------------

class Scenario:
    """One scenario: its directory, nodes, writer and proxies.

    `guard()` runs in every wait: a node that exited without being told
    to is a crash (recorded, then restarted so that the scenario goes on).
    """

    name = None
    allowed_errors = ()       # regexes of ERROR lines caused on purpose

    def __init__(self, torture, rng):
        self.torture = torture
        self.report = torture.report
        self.counts = torture.counts
        self.rng = rng
        self.directory = os.path.join(torture.workdir, self.name)
        os.makedirs(self.directory)
        self.nodes = []
        self.proxies = []
        self.writer = None
        self.primary = None

    def node(self, name, **kw):
        node = Zrsd(self.directory, name, **kw)
        self.nodes.append(node)
        return node

    def start_primary(self):
        self.primary = self.node('primary').start()
        self.writer = Writer(self.primary.zeo_address,
                             os.path.join(self.directory, 'writer-blobs'),
                             random.Random(self.rng.random())).start()
        return self.primary

    def count(self, key, n=1):
        self.report.counts['%s: %s' % (self.name, key)] += n

    def say(self, text):
        self.report.say('  [%s] %s' % (self.name, text))

    def guard(self):
        for node in self.nodes:
            status = node.unexpected_exit()
            if status is not None:
                self.report.crashes.append(
                    '%s: %s (%s) exited with status %s; log %s' % (
                        self.name, node.name, node.role, status,
                        node.logs[-1]))
                self.say('CRASH: %s exited with %s, restarting' % (
                    node.name, status))
                node.start()
        if self.writer is not None and self.writer.failure:
            raise ScenarioFailed('the writer failed:\n%s'
                                 % self.writer.failure)

    def wait(self, predicate, what, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            self.guard()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ScenarioFailed('timed out after %ss waiting for %s'
                                     % (timeout, what))
            time.sleep(0.05)

    def pause(self, seconds):
        """A random wait that chooses a moment (the guard keeps watch)."""
        deadline = time.monotonic() + seconds
        while True:
            self.guard()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    def wait_commits(self, count):
        target = self.writer.commits + count
        self.wait(lambda: self.writer.commits >= target,
                  '%d commits by the writer' % count)

    def burst(self, seconds):
        self.writer.burst = True
        try:
            self.pause(seconds)
        finally:
            self.writer.burst = False

    def wait_caught_up(self, node, tid=None):
        """Wait until `node` (via /status) has `tid` (default: the
        writer's last commit now)."""
        tid = tid or self.writer.last_tid
        self.wait(lambda: (node.last_tid() or z64) >= tid,
                  '%s to reach %s' % (node.name, tid.hex()))

    def log_wait(self, node, pattern, count=1, start=0):
        """Wait until `node`'s current log matches `pattern` `count`
        times (after offset `start`); returns the matches."""
        regex = re.compile(pattern)

        def seen():
            found = [m.group(0) for m in
                     regex.finditer(node.log_text()[start:])]
            return found if len(found) >= count else None
        return self.wait(seen, '%r in %s' % (pattern, node.logs[-1]))

    # -- the common end ----------------------------------------------------

    def settle(self, replicas):
        """Stop the writer; wait until every replica's ZEO clients see
        the primary's last transaction; SIGTERM everything (exit 0)."""
        self.writer.stop()
        if self.writer.failure:
            raise ScenarioFailed('the writer failed:\n%s'
                                 % self.writer.failure)
        for proxy in self.proxies:
            proxy.flow()
            proxy.throttle(None)
        storage = ZEO.client(self.primary.zeo_address, wait_timeout=WAIT)
        try:
            last = storage.lastTransaction()
        finally:
            storage.close()
        for node in replicas:
            self.wait(lambda: node.running() and node.last_tid() is not None,
                      '%s to serve' % node.name)
            storage = ZEO.client(node.zeo_address, read_only=True,
                                 wait_timeout=WAIT)
            try:
                self.wait(lambda: storage.lastTransaction() == last,
                          '%s ZEO lastTransaction == %s' % (node.name,
                                                            last.hex()))
            finally:
                storage.close()
        self.guard()
        for node in list(replicas) + [self.primary]:
            status = node.stop()
            if status != 0:
                self.report.crashes.append(
                    '%s: %s exited with status %s on SIGTERM; log %s' % (
                        self.name, node.name, status, node.logs[-1]))
        return last

    def compare(self, replica, **kw):
        compared, blobs, mismatches = compare_exact(self.primary, replica,
                                                    **kw)
        self.record(replica, compared, blobs, mismatches)
        return compared

    def record(self, replica, compared, blobs, mismatches):
        self.report.compared += compared
        self.report.blobs_compared += blobs
        self.report.mismatches.extend('%s: %s' % (self.name, m)
                                      for m in mismatches)
        self.say('%s: %d transactions, %d blob files compared, %d '
                 'mismatches' % (replica.name, compared, blobs,
                                 len(mismatches)))

    def writer_summary(self):
        w = self.writer
        errors = ', '.join('%s %d' % kv for kv in sorted(w.errors.items()))
        self.say('writer: %d commits (%d with blobs, %d undos), failed '
                 'commits: %s' % (w.commits, w.blob_commits, w.undos,
                                  errors or 'none'))
        self.count('writer commits', w.commits)

    def cleanup(self):
        if self.writer is not None and self.writer.alive():
            self.writer.stop()
        for proxy in self.proxies:
            proxy.close()
        for node in self.nodes:
            node.close()

    def scan_logs(self):
        """Every ERROR/CRITICAL entry (the line and its traceback) and
        every stray traceback that the scenario does not cause on purpose
        is a violation; returns (expected, unexpected) counts."""
        allowed = [re.compile(p) for p in
                   self.allowed_errors + COMMON_ALLOWED_ERRORS]
        expected = unexpected = 0
        for node in self.nodes:
            for path in node.logs:
                for entry in log_entries(path):
                    first = entry.splitlines()[0]
                    match = LOG_LINE.match(first)
                    if match and match.group('level') not in (
                            'ERROR', 'CRITICAL'):
                        if 'Traceback' not in entry:
                            continue
                    if any(a.search(entry) for a in allowed):
                        expected += 1
                        continue
                    unexpected += 1
                    last = entry.strip().splitlines()[-1]
                    self.report.errors.append('%s: %s: %s%s' % (
                        self.name, os.path.basename(path), first.strip(),
                        (' ... ' + last.strip()) if last != first else ''))
        return expected, unexpected


def log_entries(path):
    """The entries of a zrsd log: each log line with the lines that
    follow it up to the next log line (a traceback, say)."""
    with open(path, 'rb') as f:
        lines = f.read().decode('utf-8', 'replace').splitlines()
    entry = []
    for line in lines:
        if LOG_LINE.match(line) and entry:
            yield '\n'.join(entry)
            entry = []
        entry.append(line)
    if entry:
        yield '\n'.join(entry)


class KillReplica(Scenario):
    """kill -9 of a replica at start-up, during catch-up and live."""

    name = 'kill-replica'

    def run(self, counts):
        self.start_primary()
        self.writer.burst = True
        self.wait_commits(counts['initial_commits'])
        self.writer.burst = False
        replica = self.node('replica', upstream=self.primary.repl_port)
        phases = ['catch-up', 'live', 'start-up']
        self.rng.shuffle(phases)
        for cycle in range(counts['replica_kills']):
            phase = phases[cycle % 3]
            if phase == 'catch-up':
                # A backlog of large blobs and small transactions, so
                # that streaming it takes a while.
                self.writer.heavy = True
                self.pause(self.rng.uniform(0.3, 1.0))
                self.writer.heavy = False
                self.burst(self.rng.uniform(0.3, 1.0))
            before = self.file_last_tid(replica)
            behind = self.writer.last_tid
            replica.start()
            if phase == 'start-up':
                self.pause(self.rng.uniform(0.0, 1.0))
            elif phase == 'catch-up':
                self.log_wait(replica, r'connected \(zrs2\.1\)')
                self.pause(self.rng.uniform(0.0, 0.4))
            else:
                self.wait_caught_up(replica)
                self.pause(self.rng.uniform(0.0, 1.0))
            replica.kill()
            # Where the kill landed, by what the file holds afterwards.
            after = self.file_last_tid(replica)
            if after == before:
                landed = 'before applying anything'
            elif after < behind:
                landed = 'during catch-up'
            else:
                landed = 'live'
            self.count('kills aimed at %s' % phase)
            self.count('kills landed %s' % landed)
        replica.start()
        self.wait_caught_up(replica)
        self.settle([replica])
        self.writer_summary()
        self.compare(replica)

    def file_last_tid(self, node):
        """The last committed tid in a stopped node's file (z64 if none):
        read as zrsd does on restart, not as FileStorage reports it."""
        if not os.path.exists(node.fs_path):
            return z64
        fs = ZODB.FileStorage.FileStorage(node.fs_path, read_only=True)
        try:
            return last_committed_tid(fs)
        finally:
            fs.close()


class Links(Scenario):
    """Cuts, stalls and throttling of the replication link."""

    name = 'links'

    def run(self, counts):
        self.start_primary()
        self.wait_commits(100)
        proxy = ChaosProxy(self.primary.repl_port)
        self.proxies.append(proxy)
        replica = self.node('replica', upstream=proxy.port).start()
        self.wait_caught_up(replica)
        events = (['cut'] * counts['cuts'] + ['stall'] * counts['stalls']
                  + ['throttle'] * counts['throttles'])
        self.rng.shuffle(events)
        for event in events:
            if self.rng.random() < 0.2:
                self.burst(self.rng.uniform(0.2, 1.0))
            # A random moment in the life of an open connection.
            self.wait(lambda: proxy.open_links(), 'a replication link')
            self.pause(self.rng.expovariate(1 / 0.3))
            getattr(self, event)(proxy)
        self.say('proxy: %d connections, %d cuts (%d links), %.1f MB '
                 'forwarded' % (proxy.accepted, proxy.cuts, proxy.links_cut,
                                proxy.bytes_down / 1e6))
        self.settle([replica])
        self.writer_summary()
        self.compare(replica)

    def cut(self, proxy):
        reset = self.rng.random() < 0.5
        if proxy.cut(reset=reset):
            self.count('link cuts (%s)' % ('RST' if reset else 'FIN'))

    def stall(self, proxy):
        proxy.stall()
        self.pause(self.rng.uniform(0.2, 2.0))
        if self.rng.random() < 0.3:
            proxy.cut(reset=self.rng.random() < 0.5)
            self.count('link cuts during a stall')
        proxy.flow()
        self.count('stalls')

    def throttle(self, proxy):
        proxy.throttle(self.rng.choice([20e3, 100e3, 500e3]))
        self.burst(self.rng.uniform(0.5, 2.0))
        if self.rng.random() < 0.3:
            proxy.cut(reset=self.rng.random() < 0.5)
            self.count('link cuts while throttled')
        proxy.throttle(None)
        self.count('throttled periods')


class PrimaryRestart(Scenario):
    """kill -9 and restart of the primary under a cascade."""

    name = 'primary-restart'

    def run(self, counts):
        self.start_primary()
        self.wait_commits(200)
        cascade = self.node('cascade', upstream=self.primary.repl_port,
                            serve=True).start()
        leaf = self.node('leaf', upstream=cascade.repl_port).start()
        self.wait_caught_up(leaf)
        for _ in range(counts['primary_restarts']):
            if self.rng.random() < 0.5:
                self.burst(self.rng.uniform(0.2, 2.0))
            else:
                self.pause(self.rng.uniform(0.2, 2.0))
            self.primary.kill()
            self.count('primary kills')
            self.pause(self.rng.uniform(0.0, 1.0))
            self.primary.start()
            self.wait_commits(20)      # the writer is back
        self.settle([cascade, leaf])
        self.writer_summary()
        if self.writer.uncertain:
            self.say('%d commits had an unknown outcome (the primary died '
                     'during the commit)' % self.writer.uncertain)
        self.compare(cascade)
        self.compare(leaf)


class Pack(Scenario):
    """Packs of the primary while replicas catch up and the writer
    writes; see the module docstring for what is compared."""

    name = 'pack'
    # The writer asks for the undo log while the pack runs: FileStorage
    # refuses, and ZEO logs that refusal as an error.
    allowed_errors = (r'Error raised in delayed method(.|\n)*UndoError: '
                      r'.*Undo is currently disabled for database '
                      r'maintenance',)

    def run(self, counts):
        self.start_primary()
        self.writer.burst = True
        self.wait_commits(counts['initial_commits'])
        self.writer.burst = False
        # R1 replicates through a proxy that throttles its catch-ups, so
        # that each pack lands while R1 is streaming its backlog.
        proxy = ChaosProxy(self.primary.repl_port, socket_buffer=65536)
        self.proxies.append(proxy)
        r1 = self.node('r1', upstream=proxy.port).start()
        self.wait_caught_up(r1)
        stops = []
        for _ in range(counts['packs']):
            r1.kill()
            self.count('r1 kills before a pack')
            # A backlog: large blobs first (several MB, more than can be
            # in flight on the link), then small transactions; the pack
            # time is among the small ones, so R1 gets them packed.
            self.writer.heavy = True
            self.pause(self.rng.uniform(0.5, 1.0))
            self.writer.heavy = False
            start = time.time()
            self.burst(self.rng.uniform(1.0, 2.0))
            pack_time = self.rng.uniform(start, time.time())
            backlog = self.writer.last_tid
            proxy.throttle(1e6)
            r1.start()
            self.log_wait(r1, r'connected \(zrs2\.1\)')
            self.pause(self.rng.uniform(0.0, 1.0))
            behind = (r1.last_tid() or z64) < backlog
            self.pack(pack_time)
            self.count('packs while r1 was catching up' if behind else
                       'packs after r1 caught up')
            stops.append(pack_stop_tid(pack_time))
            proxy.throttle(None)
            self.wait_commits(50)
        r2 = self.node('r2', upstream=self.primary.repl_port).start()
        self.wait_caught_up(r2)
        self.settle([r1, r2])
        self.writer_summary()
        self.compare(r2)
        witness = None
        if not self.writer.uncertain:
            witness = set(self.writer.tids)
            witness.update(t for t in self.all_tids(r1)
                           if t <= self.writer.initial_tid)
        compared, blobs, mismatches, details = compare_after_pack(
            self.primary, r1, max(stops), witness)
        self.say(details)
        self.record(r1, compared, blobs, mismatches)

    @staticmethod
    def all_tids(node):
        return [t[0] for t in history(node.fs_path)]

    def pack(self, pack_time):
        """Pack the primary through a ZEO client (it returns once the pack
        is done); the writer goes on meanwhile."""
        storage = ZEO.client(self.primary.zeo_address, wait_timeout=WAIT)
        try:
            began = time.monotonic()
            storage.pack(pack_time, wait=True)
            self.say('packed to %s in %.1fs' % (
                pack_stop_tid(pack_time).hex(), time.monotonic() - began))
        finally:
            storage.close()
        self.count('packs')


class DiskFull(Scenario):
    """Two replicas' disks fill up; space comes back.

    Replica `full` has its data file and blobs on a small filesystem,
    replica `fsonly` only its data file (and FileStorage's `.tmp` file
    beside it; blobs elsewhere).  In each episode both filesystems are
    limited to what they hold plus 1-3 MB, and the writer commits large
    records and blobs until both replicas have logged the disk-full ERROR
    twice (they keep running and retrying).  Then one of them, in
    turn, is killed while full (its file must open and be a prefix of
    the primary's) and restarted while still full; space comes back and
    both must catch up.
    """

    name = 'disk-full'
    allowed_errors = (DISK_FULL_ERROR,)

    def make_space(self, directory, fs_path):
        wanted = self.torture.disk_full_variant
        if wanted in ('auto', 'tmpfs'):
            try:
                return TmpfsSpace(directory)
            except OSError as exc:
                if wanted == 'tmpfs':
                    raise ScenarioFailed('cannot mount a tmpfs: %s' % exc)
                note = ('disk-full: mounting a tmpfs failed (%s); using the '
                        'injected variant' % exc)
                if note not in self.report.notes:
                    self.report.notes.append(note)
        return InjectedSpace(directory, fs_path)

    def run(self, counts):
        self.spaces = []
        self.start_primary()
        self.wait_commits(200)
        replicas = []
        for name, blobs_on_small in (('full', True), ('fsonly', False)):
            small = os.path.join(self.directory, 'small-' + name)
            space = self.make_space(small, os.path.join(small, name + '.fs'))
            self.spaces.append(space)
            replica = self.node(
                name, upstream=self.primary.repl_port, data_dir=small,
                blob_parent=small if blobs_on_small else self.directory,
                env=space.env).start()
            replica.space = space
            replicas.append(replica)
        variant = self.spaces[0].variant
        self.say('disk-full variant: %s' % variant)
        self.report.notes.append('disk-full variant that ran: %s' % variant)
        for replica in replicas:
            self.wait_caught_up(replica)
        for episode in range(counts['disk_full']):
            offsets = []
            for replica in replicas:
                space = replica.space
                space.limit(space.used() + (self.rng.randint(1, 3) << 20))
                offsets.append(len(replica.log_text()))
            self.writer.heavy = True
            try:
                for replica, offset in zip(replicas, offsets):
                    self.log_wait(replica, DISK_FULL_ERROR, 1, offset)
            finally:
                self.writer.heavy = False
            for replica, offset in zip(replicas, offsets):
                # It keeps retrying and failing the same clear way; the
                # repeats are rate-limited (one ERROR, then DEBUG lines).
                found = self.log_wait(replica, DISK_FULL_ERROR, 1, offset)
                self.say('%s logged: %s' % (replica.name, found[0][:160]))
            self.count('disk-full episodes (2 replicas each)')
            killed = replicas[episode % 2]
            self.kill_while_full(killed)
            for replica in replicas:
                replica.space.grow()
            self.count('recoveries after space came back', 2)
            for replica in replicas:
                self.wait_caught_up(replica)
        self.settle(replicas)
        self.writer_summary()
        for replica in replicas:
            self.compare(replica)

    def kill_while_full(self, replica):
        """kill -9 while the disk is full: the file opens (as zrsd opens
        it, on a copy) and is a prefix of the primary's history; restarted
        while still full, zrsd fails cleanly again."""
        replica.kill()
        self.count('kills while the disk was full')
        scratch = tempfile.mkdtemp(dir=self.directory, prefix='copy-')
        copy = os.path.join(scratch, 'copy.fs')
        shutil.copyfile(replica.fs_path, copy)
        try:
            try:
                # Opened writable, as zrsd opens it on restart (that
                # truncates an interrupted transaction).
                ZODB.FileStorage.FileStorage(copy).close()
            except Exception as exc:
                self.report.mismatches.append(
                    '%s: %s: the file does not open after a kill while the '
                    'disk was full: %s: %s' % (self.name, replica.name,
                                               type(exc).__name__, exc))
            else:
                self.writer.pause()
                try:
                    compared, blobs, mismatches = compare_exact(
                        self.primary, replica, prefix=True,
                        replica_path=copy)
                finally:
                    self.writer.resume()
                self.say('%s killed while full: its %d transactions are a '
                         'prefix of the primary\'s, %d mismatches' % (
                             replica.name, compared, len(mismatches)))
                self.record(replica, compared, blobs, mismatches)
        finally:
            shutil.rmtree(scratch)
        # Restart while still full: it must run and fail cleanly again,
        # or, if it cannot even open its file, exit saying why.
        replica.start()
        replica.expected_exit = True      # handled here, not by guard()
        self.wait(lambda: not replica.running() or re.search(
            DISK_FULL_ERROR, replica.log_text()),
            '%s, restarted on a full disk, to log the disk-full error'
            % replica.name)
        self.count('restarts while the disk was full')
        if replica.running():
            replica.expected_exit = False
            return
        status = replica.process.popen.returncode
        self.report.notes.append(
            'disk-full: %s restarted on a full disk exited with %s'
            % (replica.name, status))
        if not DISK_FULL.search(replica.log_text()):
            self.report.crashes.append(
                '%s: %s restarted on a full disk exited with %s without '
                'saying the disk is full; log %s' % (
                    self.name, replica.name, status, replica.logs[-1]))
        replica.space.grow()
        replica.start()

    def cleanup(self):
        super().cleanup()
        for space in getattr(self, 'spaces', ()):
            space.close()


SCENARIO_CLASSES = {cls.name: cls for cls in (
    KillReplica, Links, PrimaryRestart, Pack, DiskFull)}


class Torture:
    """Runs the scenarios and keeps the report."""

    def __init__(self, workdir, seed, counts, disk_full_variant):
        self.workdir = workdir
        self.seed = seed
        self.counts = counts
        self.disk_full_variant = disk_full_variant
        self.report = Report()

    def run(self, names):
        for name in names:
            cls = SCENARIO_CLASSES[name]
            rng = random.Random('%s-%s' % (self.seed, name))
            scenario = cls(self, rng)
            self.report.say('== %s' % name)
            began = time.monotonic()
            mismatches = len(self.report.mismatches)
            crashes = len(self.report.crashes)
            outcome = 'ok'
            try:
                scenario.run(self.counts)
            except ScenarioFailed as exc:
                outcome = 'FAILED: %s' % str(exc).splitlines()[0]
                self.report.failures.append('%s: %s' % (name, exc))
            except Exception:
                outcome = 'FAILED: exception'
                self.report.failures.append('%s: %s' % (
                    name, traceback.format_exc()))
            finally:
                scenario.cleanup()
            expected, unexpected = scenario.scan_logs()
            if expected:
                scenario.say('%d expected ERROR lines (caused on purpose)'
                             % expected)
            mismatches = len(self.report.mismatches) - mismatches
            crashes = len(self.report.crashes) - crashes
            found = ['%d %s' % (count, what) for count, what in (
                (mismatches, 'mismatches'), (crashes, 'crashes'),
                (unexpected, 'unexpected error lines')) if count]
            if found:
                outcome = ('VIOLATED: ' if outcome == 'ok'
                           else outcome + '; ') + ', '.join(found)
            took = time.monotonic() - began
            self.report.scenarios.append((name, took, outcome))
            self.report.say('== %s: %s (%.1fs)' % (name, outcome, took))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='torture.py', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--long', action='store_true',
                        help='the long run (50 replica kills, 200 link '
                             'cuts, ...); default: the short run')
    parser.add_argument('--seed', type=int, default=None,
                        help='seed of the random choices (default: random,'
                             ' printed)')
    parser.add_argument('--only', action='append', choices=SCENARIOS,
                        metavar='SCENARIO',
                        help='run only this scenario (repeatable): %s'
                             % ', '.join(SCENARIOS))
    parser.add_argument('--disk-full', default='auto',
                        choices=('auto', 'tmpfs', 'injected'),
                        help='disk-full variant (auto: tmpfs when mounting '
                             'is allowed, else injected)')
    parser.add_argument('--workdir', help='where to work (default: a new '
                                          'temporary directory)')
    parser.add_argument('--keep', action='store_true',
                        help='keep the work directory even after a clean '
                             'run')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    mode = 'long' if args.long else 'short'
    workdir = args.workdir or tempfile.mkdtemp(prefix='zrsd-torture-')
    os.makedirs(workdir, exist_ok=True)
    # The writer's ZEO client logs (reconnections, ...) go to a file.
    logging.basicConfig(
        filename=os.path.join(workdir, 'torture-clients.log'),
        level=logging.WARNING,
        format='%(asctime)s %(levelname)s %(name)s %(message)s')
    names = args.only or list(SCENARIOS)
    print('zrsd torture: %s run, seed %d, scenarios %s, work directory %s'
          % (mode, seed, ', '.join(names), workdir), flush=True)
    torture = Torture(workdir, seed, COUNTS[mode], args.disk_full)
    began = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
    try:
        torture.run(names)
    finally:
        report = torture.report
        print(report.summary(time.monotonic() - began, workdir), flush=True)
    if report.violations():
        print('re-run: %s scripts/torture.py%s --seed %d%s' % (
            os.path.relpath(sys.executable), ' --long' if args.long else '',
            seed, ''.join(' --only %s' % n for n in args.only or ())))
        return 1
    if not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
