#!/usr/bin/env python3
"""zrsd benchmark: catch-up, lag, reads and memory, side by side with zc.zrs.

    .venv/bin/python scripts/bench.py [--preset small|default] [--rounds N]
                                      [--lag-seconds S] [--json PATH]

`make bench` runs the default preset.  docs/bench.md explains what each
figure measures and how to read the output.

Everything runs on 127.0.0.1 with real processes: zc.zrs 3.1.0 primaries
under ZEO 6's `runzeo`, zc.zrs 3.1.0 secondaries on ZODB 5.5.1 (the peer
virtualenv of tests/peers.py, built on first use), `zrsd` primaries and
replicas, a plain `runzeo`, ZEO clients in this process and in worker
processes.  zc.zrs is never imported here.

The workload (a FileStorage written in-process with a fixed seed) is cached
under var/bench/, keyed by preset and seed; each run works in
var/bench/run-TIMESTAMP/ (data files are removed at the end, logs kept) and
writes var/bench/results-TIMESTAMP.json.
"""
import argparse
import importlib
import json
import math
import multiprocessing
import os
import pickle
import platform
import queue
import random
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

import ZEO  # noqa: E402
import ZODB.FileStorage  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402
from ZODB.Connection import TransactionMetaData  # noqa: E402
from ZODB.TimeStamp import TimeStamp  # noqa: E402
from ZODB.utils import p64, u64, z64  # noqa: E402

from zrsd_nodes import config_text, process_memory  # noqa: E402

MB = 1024.0 * 1024.0
BENCH_DIR = os.path.join(ROOT, 'var', 'bench')
WORKLOAD_FORMAT = 1          # bump when the generator changes
POOL_SIZE = 8 << 20          # random bytes that record payloads are cut from
CATCHUP_POLL = 0.02          # seconds between `ruok` polls of a replica

PRESETS = {
    'small': dict(transactions=2000, big_transactions=1, lag_seconds=3.0,
                  read_seconds=2.0),
    'default': dict(transactions=20000, big_transactions=4,
                    lag_seconds=10.0, read_seconds=5.0),
}
LAG_RATES = (100, 500)
LAG_OBJECTS = 16             # each writer cycles through this many objects
LAG_WRITER_RATE = 250        # commits/s per writer connection at most
LAG_LOADERS = 4              # loader threads of the lag reader
READ_CLIENTS = (1, 4)
READ_CACHE_SIZE = 256 << 10  # ZEO client cache: small, loads reach the server
BIG_TXN_RECORDS = 10         # the memory test's 100 MB transaction:
BIG_TXN_RECORD_MB = 10       # 10 records of 10 MB
BLOB_MB = 1024               # ... and its 1 GB blob
BLOB_MIN_FREE = 4 << 30      # free disk needed for the blob test

PAIRS = {
    'a': '(a) zc.zrs primary -> zrsd replica',
    'b': '(b) zrsd primary -> zrsd replica',
    'c': '(c) zc.zrs primary -> zc.zrs secondary',
    'd': '(d) copyTransactionsFrom (fsync)',
    'e': '(e) zc.zrs primary -> bare stream',
}
LAG_PAIRS = {
    'b': 'zrsd -> zrsd',
    'a': 'zc.zrs -> zrsd',
    'c': 'zc.zrs -> zc.zrs (ref)',
}

TARGETS = {
    'catchup_a_over_e': '>= 0.9',
    'catchup_b_over_c': '>= 3',
    'lag_500_p99_ms': '<= 2',
    'lag_500_max_ms': '<= 15',
    'reads_ratio': '>= 0.95',
    'reads_cpu_ratio': '<= 1.05',
    'memory_mb': '<= 150',
}


def log(message):
    """Progress on stderr (stdout gets the result tables)."""
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), message))
    sys.stderr.flush()


# --------------------------------------------------------------------------
# The workload


def record_meta():
    """The class pickle of a PersistentMapping record (ZODB's first part)."""
    return pickle.dumps((PersistentMapping, None), 3)


def record_size(rng):
    """100 B - 20 KB, skewed small: median ~200 B, mean ~1.5 KB."""
    return int(100 * 200 ** (rng.random() ** 3))


def tid_at(seconds):
    """The tid of a commit at `seconds` since the epoch (UTC)."""
    return TimeStamp(*time.gmtime(seconds)[:5] + (seconds % 60,)).raw()


def generate_workload(path, transactions, big_transactions, seed):
    """Write the workload FileStorage at `path` (and its .index).

    Deterministic for (transactions, big_transactions, seed): tids start at
    2024-01-01 00:00 UTC, 1-50 ms apart.  Transaction 0 stores the root
    (oid 0).  Each other transaction touches 1-20 distinct objects (a new
    object with probability 0.3, else an existing one at random), records
    of `record_size()`; every transaction with probability 0.2 has a user,
    a description and extension data; `big_transactions` evenly spaced
    transactions hold 5 MB (one 5 MB record, or five of 1 MB, alternately).
    Records are PersistentMapping pickles of a payload cut from a random
    pool (prefixed with a counter, so no two are alike).

    FileStorage fsyncs each transaction; not needed here (the file is
    fsynced once at the end), so the module's `fsync` is switched off while
    writing.  Returns the metadata dict.
    """
    rng = random.Random(seed)
    pool = rng.randbytes(POOL_SIZE)
    meta_pickle = record_meta()
    counter = [0]

    def record(size):
        counter[0] += 1
        payload_size = max(size - len(meta_pickle) - 40, 8)
        offset = rng.randrange(POOL_SIZE - payload_size + 8)
        payload = struct.pack('>Q', counter[0]) + \
            pool[offset:offset + payload_size - 8]
        return meta_pickle + pickle.dumps({'data': {'payload': payload}}, 3)

    big_at = {int((k + 1) * transactions / (big_transactions + 1)): k
              for k in range(big_transactions)}
    fsmodule = importlib.import_module('ZODB.FileStorage.FileStorage')
    saved_fsync = fsmodule.fsync
    fsmodule.fsync = None
    for suffix in ('', '.index', '.lock', '.tmp'):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    fs = ZODB.FileStorage.FileStorage(path, create=True)
    stats = dict(records=0, data_bytes=0, extension_transactions=0,
                 big_transactions=0)
    try:
        now = 1704067200.0          # 2024-01-01 00:00:00 UTC
        last_tid = z64
        oids = []
        last_oid = None
        for i in range(transactions):
            now += rng.uniform(0.001, 0.05)
            tid = tid_at(now)
            if tid <= last_tid:
                tid = TimeStamp(last_tid).laterThan(TimeStamp(last_tid)).raw()
            records = []
            if i == 0:
                records.append((z64, meta_pickle + pickle.dumps(
                    {'data': {}}, 3)))
                oids.append(0)
                user, description, extension = (
                    'bench', 'create the root', {'origin': 'zrsd-bench'})
            else:
                if i in big_at:
                    k = big_at[i]
                    sizes = [5 << 20] if k % 2 == 0 else [1 << 20] * 5
                    stats['big_transactions'] += 1
                else:
                    sizes = [record_size(rng)
                             for _ in range(rng.randint(1, 20))]
                touched = set()
                for size in sizes:
                    if len(oids) < 20 or rng.random() < 0.3 or i in big_at:
                        oid = len(oids)
                        oids.append(oid)
                    else:
                        oid = oids[rng.randrange(len(oids))]
                        if oid in touched:
                            continue
                    touched.add(oid)
                    records.append((p64(oid), record(size)))
                if rng.random() < 0.2:
                    stats['extension_transactions'] += 1
                    user = 'bench-user-%d' % rng.randrange(5)
                    description = rng.choice([
                        'edit', 'bulk import', 'nightly job',
                        'café ✓ résumé'])
                    extension = {'batch': i // 100, 'origin': 'zrsd-bench',
                                 'seq': i, 'tags': ['x', 'y'][:i % 3],
                                 'load': round(rng.random(), 3)}
                else:
                    user, description, extension = '', '', {}
            t = TransactionMetaData(user, description, extension)
            fs.tpc_begin(t, tid)
            for oid, data in records:
                fs.restore(oid, tid, data, '', None, t)
                stats['records'] += 1
                stats['data_bytes'] += len(data)
            fs.tpc_vote(t)
            fs.tpc_finish(t)
            last_tid = tid
            last_oid = records[-1][0]
    finally:
        fs.close()
        fsmodule.fsync = saved_fsync
    with open(path, 'rb+') as f:
        os.fsync(f.fileno())
    for suffix in ('.lock', '.tmp'):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    stats.update(transactions=transactions, last_tid=last_tid.hex(),
                 last_oid=last_oid.hex(), max_oid=len(oids) - 1,
                 objects=len(oids), file_bytes=os.path.getsize(path),
                 seed=seed)
    return stats


def workload(preset, seed):
    """(path, metadata) of the cached workload file, generated if missing.

    The file and its metadata live in var/bench/, named by preset, seed and
    generator version; the metadata file is written last, so an
    interrupted generation is redone.
    """
    params = PRESETS[preset]
    name = 'workload-%s-seed%d-v%d' % (preset, seed, WORKLOAD_FORMAT)
    path = os.path.join(BENCH_DIR, name + '.fs')
    meta_path = os.path.join(BENCH_DIR, name + '.json')
    os.makedirs(BENCH_DIR, exist_ok=True)
    if os.path.exists(meta_path) and os.path.exists(path) \
            and os.path.exists(path + '.index'):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get('file_bytes') == os.path.getsize(path):
            log('workload: cached %s (%d transactions, %.1f MB)' % (
                os.path.relpath(path, ROOT), meta['transactions'],
                meta['file_bytes'] / MB))
            return path, meta
    log('workload: generating %s (%d transactions, seed %d) ...' % (
        os.path.relpath(path, ROOT), params['transactions'], seed))
    started = time.monotonic()
    tmp = os.path.join(BENCH_DIR, name + '.partial.fs')
    meta = generate_workload(tmp, params['transactions'],
                             params['big_transactions'], seed)
    meta['generation_seconds'] = round(time.monotonic() - started, 2)
    meta['preset'] = preset
    os.replace(tmp + '.index', path + '.index')
    os.replace(tmp, path)
    with open(meta_path + '.partial', 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(meta_path + '.partial', meta_path)
    log('workload: %d transactions, %d records, %.1f MB in %.1f s' % (
        meta['transactions'], meta['records'], meta['file_bytes'] / MB,
        meta['generation_seconds']))
    return path, meta


def primary_directory(args, meta, stamp):
    """Where the primaries' files go: a directory on tmpfs (/dev/shm) when
    there is room for two copies of the workload and --primaries-on-disk
    is not given, else None (the run directory).

    A primary's own fsync is in no figure (the lag clock starts when its
    tpc_finish has returned), but on this one machine it shares the disk
    with the replica's fsyncs and caps the writer's commit rate; on tmpfs
    it does neither.  The replicas always write to the disk.
    """
    if args.primaries_on_disk or not os.path.isdir('/dev/shm'):
        return None
    try:
        free = shutil.disk_usage('/dev/shm').free
    except OSError:
        return None
    if free < 3 * meta['file_bytes'] + (1 << 30):
        return None
    path = os.path.join('/dev/shm', 'zrsd-bench-%s-%d' % (stamp, os.getpid()))
    os.makedirs(path)
    return path


def remove_data_files(top):
    """Delete every file under `top` but logs and configurations."""
    for directory, _, files in os.walk(top):
        for name in files:
            if not name.endswith(('.log', '.conf', '.py', '.txt')):
                os.remove(os.path.join(directory, name))


def copy_storage(source, target):
    """Copy a FileStorage and its index (to be opened writable elsewhere)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
    if os.path.exists(source + '.index'):
        shutil.copyfile(source + '.index', target + '.index')


# --------------------------------------------------------------------------
# Measuring helpers


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), seconds; None if gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def vm_status(pid):
    """{'VmRSS': bytes, 'VmHWM': bytes} of a process, or {}."""
    memory = process_memory(pid)
    return {} if memory is None else dict(zip(('VmRSS', 'VmHWM'), memory))


def reset_peak_rss(pid):
    """Reset VmHWM to the current RSS (`echo 5 > /proc/PID/clear_refs`);
    True if the kernel did."""
    try:
        with open('/proc/%d/clear_refs' % pid, 'w') as f:
            f.write('5')
    except OSError:
        return False
    values = vm_status(pid)
    return bool(values) and \
        values['VmHWM'] <= values['VmRSS'] * 1.1 + (1 << 20)


def server_status(port, timeout=5.0):
    """The `ruok` status of the ZEO server on 127.0.0.1:port, storage '1'
    (a dict), or None if it does not answer (yet)."""
    from zrsd.check import StatusError, ask_status
    try:
        return ask_status('127.0.0.1:%d' % port, 'server', timeout)['1']
    except (StatusError, KeyError):
        return None


def served_tid(port):
    status = server_status(port)
    if status is None:
        return None
    return bytes.fromhex(status['last-transaction'])


def wait_served(port, tid, alive, timeout, interval=CATCHUP_POLL):
    """Poll the ZEO server on `port` (ruok) until its last transaction is
    `tid`; return time.monotonic() of the answer that said so.  `alive()`
    raises if a process it watches died."""
    deadline = time.monotonic() + timeout
    while True:
        if served_tid(port) == tid:
            return time.monotonic()
        alive()
        if time.monotonic() > deadline:
            raise RuntimeError('timed out after %ds waiting for tid %s on '
                               'port %d (it serves %s)' % (
                                   timeout, tid.hex(), port,
                                   (served_tid(port) or b'').hex()))
        time.sleep(interval)


def verify_load(port, oid, tid):
    """A ZEO client of the server on `port` loads `oid` as of `tid`: the
    revision must be the one written by `tid`."""
    storage = ZEO.client(('127.0.0.1', port), read_only=True,
                         wait_timeout=30)
    try:
        result = storage.loadBefore(oid, p64(u64(tid) + 1))
    finally:
        storage.close()
    return result is not None and result[1] == tid


def log_time(text, needle):
    """time.monotonic() of the first log line containing `needle` (the
    line starts with a `%(created)f` time stamp)."""
    offset = time.time() - time.monotonic()
    for line in text.splitlines():
        if needle in line:
            return float(line.split(None, 1)[0]) - offset
    return None


def cpu_after_log(proc, needle, timeout=60):
    """CPU seconds used by `proc` when `needle` appears in its log (polled
    every 5 ms): the start-up cost, to subtract from later readings."""
    deadline = time.monotonic() + timeout
    while needle not in proc.log():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError('%s did not log %r; see %s' % (
                os.path.basename(proc.args[0]), needle, proc.log_path))
        time.sleep(0.005)
    return cpu_seconds(proc.pid)


def machine_load():
    """(1-minute load average, CPU pressure: % of the last 60 s in which
    some task waited for a CPU, from /proc/pressure/cpu, or None)."""
    pressure = None
    try:
        with open('/proc/pressure/cpu') as f:
            for line in f:
                if line.startswith('some'):
                    pressure = float(line.split('avg60=')[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return os.getloadavg()[0], pressure


def fsync_probe(directory, count=200, interval=0.01):
    """fsync latency of the disk under `directory`: `count` appends of 200
    bytes, each fsynced, `interval` apart (what a replica does per live
    transaction).  Returns p50/p90/p99/max in ms."""
    path = os.path.join(directory, 'fsync-probe')
    latencies = []
    with open(path, 'wb') as f:
        for _ in range(count):
            f.write(b'x' * 200)
            f.flush()
            began = time.perf_counter()
            os.fsync(f.fileno())
            latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(interval)
    os.remove(path)
    latencies.sort()
    return dict(p50=percentile(latencies, 50), p90=percentile(latencies, 90),
                p99=percentile(latencies, 99), max=latencies[-1])


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values):
    """median, min, max (and the values) of the non-None `values`."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return dict(median=statistics.median(values), min=min(values),
                max=max(values), values=values)


def check_alive(*processes):
    """A function raising if one of the `support.Process`es exited."""
    def alive():
        for proc in processes:
            if proc.popen.poll() is not None:
                raise RuntimeError('%s exited with status %s; log %s' % (
                    os.path.basename(proc.args[0]), proc.popen.returncode,
                    proc.log_path))
    return alive


# --------------------------------------------------------------------------
# Worker processes (ZEO clients for the lag reader and the read load)


class _Recorder:
    """Registered with a ClientStorage as its "DB": timestamps every
    invalidation as it arrives (in the client's IO thread) and queues it."""

    def __init__(self, events):
        self.events = events

    def invalidate(self, tid, oids):
        self.events.put((time.monotonic(), tid, oids))

    def invalidateCache(self):
        pass

    def transform_record_data(self, data):
        return data

    def untransform_record_data(self, data):
        return data


def _lag_reader(conn, address, oids):
    """One lag session: report when each watched commit became loadable.

    Each invalidation is time-stamped as it arrives, in the client's IO
    thread.  For each one naming a watched oid, one of LAG_LOADERS loader
    threads (several, so that loads overlap instead of queueing) loads the
    object as of that tid (`loadBefore(oid, tid + 1)`, which the small,
    just-invalidated client cache cannot answer) and records
    (time of the invalidation, time the load returned, whether the load
    returned the revision written by that tid).  Stops on ('stop', tid,
    timeout) once `tid` was loaded or after `timeout`; sends the results.
    """
    events = queue.SimpleQueue()
    storage = ZEO.client(address, read_only=True, cache_size=READ_CACHE_SIZE,
                         wait_timeout=60)
    storage.registerDB(_Recorder(events))
    watched = set(oids)
    results = {}

    def loader():
        while True:
            item = events.get()
            if item is None:
                return
            t_invalidated, tid, changed = item
            for oid in changed:
                if oid in watched:
                    loaded = storage.loadBefore(oid, p64(u64(tid) + 1))
                    t_loaded = time.monotonic()
                    results[tid] = (t_invalidated, t_loaded,
                                    loaded is not None and loaded[1] == tid)

    threads = [threading.Thread(target=loader, daemon=True,
                                name='loader-%d' % i)
               for i in range(LAG_LOADERS)]
    for thread in threads:
        thread.start()
    conn.send('ready')
    _, last_tid, timeout = conn.recv()
    deadline = time.monotonic() + timeout
    while last_tid not in results and time.monotonic() < deadline:
        time.sleep(0.01)
    for thread in threads:
        events.put(None)
    for thread in threads:
        thread.join(30)
    conn.send(dict(results))
    storage.close()


def _reader(conn, address, max_oid, seed, seconds):
    """Random loads (`load`, oids 1..max_oid) for `seconds` after 'go';
    sends (loads, elapsed)."""
    storage = ZEO.client(address, read_only=True, cache_size=READ_CACHE_SIZE,
                         wait_timeout=60)
    rng = random.Random(seed)
    oids = [p64(rng.randint(1, max_oid)) for _ in range(1 << 16)]
    for oid in oids[:200]:
        storage.load(oid)
    conn.send('ready')
    conn.recv()
    loads = 0
    started = time.monotonic()
    deadline = started + seconds
    load = storage.load
    while True:
        for i in range(loads, loads + 64):
            load(oids[i & 0xffff])
        loads += 64
        if time.monotonic() >= deadline:
            break
    elapsed = time.monotonic() - started
    conn.send((loads, elapsed))
    storage.close()


def _stream_probe(conn, port, start_tid):
    """Diagnostic (--lag-probe): follow a primary's stream from `start_tid`
    like a secondary that applies nothing, and note when each transaction's
    C message arrived.  Sends {tid: time} after ('stop',)."""
    sock = socket.create_connection(('127.0.0.1', port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(struct.pack('>I', 6) + b'zrs2.0' + struct.pack('>I', 8) +
                 start_tid)
    sock.settimeout(0.1)
    buf = b''
    raw = 0
    tid = None
    arrived = {}
    conn.send('ready')
    while not conn.poll():
        try:
            data = sock.recv(1 << 20)
        except socket.timeout:
            continue
        now = time.monotonic()
        if not data:
            break
        buf += data
        while len(buf) >= 4:
            (size,) = struct.unpack_from('>I', buf)
            if len(buf) < 4 + size:
                break
            payload, buf = buf[4:4 + size], buf[4 + size:]
            if raw:
                raw -= 1
                continue
            message = pickle.loads(payload)
            if message[0] == 'S':
                raw = 1
            elif message[0] == 'B':
                raw = 1 + message[1][4]
            elif message[0] == 'T':
                tid = message[1][0]
            elif message[0] == 'C':
                arrived[tid] = now
    conn.recv()
    sock.close()
    conn.send(arrived)


def worker_main(conn):
    """A worker process: runs the commands it is sent until 'exit'."""
    while True:
        command = conn.recv()
        if command[0] == 'exit':
            return
        try:
            if command[0] == 'lag':
                _lag_reader(conn, *command[1:])
            elif command[0] == 'reads':
                _reader(conn, *command[1:])
            elif command[0] == 'probe':
                _stream_probe(conn, *command[1:])
        except Exception:
            conn.send(('error', traceback.format_exc()))


class Workers:
    """`n` spawned worker processes, each driven through a pipe."""

    def __init__(self, n):
        context = multiprocessing.get_context('spawn')
        self.conns = []
        self.procs = []
        for i in range(n):
            parent, child = context.Pipe()
            proc = context.Process(target=worker_main, args=(child,),
                                   name='bench-worker-%d' % i, daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    @staticmethod
    def receive(conn, timeout=120):
        if not conn.poll(timeout):
            raise RuntimeError('a worker did not answer within %ds' % timeout)
        answer = conn.recv()
        if isinstance(answer, tuple) and answer and answer[0] == 'error':
            raise RuntimeError('worker failed:\n' + answer[1])
        return answer

    def close(self, force=False):
        """Ask the workers to exit (kill them with `force`, or if they do
        not exit within 10 s)."""
        for conn in self.conns:
            try:
                conn.send(('exit',))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(0 if force else 10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


# --------------------------------------------------------------------------
# The bench run: servers and their lifetimes


class Bench:

    def __init__(self, args, workload_path, meta):
        import peers
        import support
        import zczrs
        import zrsd_nodes
        self.peers, self.support = peers, support
        self.zczrs, self.zrsd_nodes = zczrs, zrsd_nodes
        self.args = args
        self.workload_path = workload_path
        self.meta = meta
        self.last_tid = bytes.fromhex(meta['last_tid'])
        self.last_oid = bytes.fromhex(meta['last_oid'])
        self.stamp = time.strftime('%Y%m%d-%H%M%S')
        self.dir = os.path.join(BENCH_DIR, 'run-' + self.stamp)
        os.makedirs(self.dir)
        self.primary_dir = primary_directory(args, meta, self.stamp)
        self.owned = []             # objects with .close(): all our servers
        self.zc_primary = None
        self.zrsd_primary = None
        self.kept = {}              # lag pair -> stopped, caught-up replica
        self.workers = None
        self.peer_python = None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def primary_path(self, name):
        if self.primary_dir is None:
            return self.path(name)
        return os.path.join(self.primary_dir, name)

    def own(self, thing):
        self.owned.append(thing)
        return thing

    def close(self):
        """Stop the workers and every server started so far."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        owned, self.owned = self.owned, []
        for thing in reversed(owned):
            try:
                proc = getattr(thing, 'process', None)
                if proc is not None and proc.popen.poll() is None:
                    proc.stop(60)
            except Exception:
                pass
            try:
                thing.close()
            except Exception:
                pass

    def remove_primaries(self):
        """Move the primaries' logs into the run directory and remove their
        tmpfs directory."""
        if self.primary_dir is None:
            return
        for directory, _, files in os.walk(self.primary_dir):
            for name in files:
                if name.endswith(('.log', '.conf')):
                    target = self.path(os.path.relpath(
                        os.path.join(directory, name), self.primary_dir))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.copyfile(os.path.join(directory, name), target)
        shutil.rmtree(self.primary_dir, ignore_errors=True)

    def remove_data(self):
        """Delete the big files of the run, keep logs and configs."""
        remove_data_files(self.dir)

    # -- primaries --------------------------------------------------------

    def zc(self):
        """The zc.zrs primary (runzeo) on a copy of the workload."""
        if self.zc_primary is not None and not self.zc_primary.running():
            log('the zc.zrs primary had exited (status %s); restarting it'
                % self.zc_primary.process.popen.returncode)
            self.zc_primary.start()
        if self.zc_primary is None:
            primary = self.zczrs.ZcZrsPrimary(
                self.primary_path('zc-primary'))
            copy_storage(self.workload_path, primary.fs_path)
            self.own(primary).start()
            self.zc_primary = primary
        return self.zc_primary

    def zrsd(self):
        """The zrsd primary on a copy of the workload."""
        if self.zrsd_primary is not None and not self.zrsd_primary.running():
            log('the zrsd primary had exited (status %s); restarting it'
                % self.zrsd_primary.process.popen.returncode)
            self.zrsd_primary.start()
        if self.zrsd_primary is None:
            primary = self.zrsd_nodes.ZrsdNode(
                self.primary_path('zrsd-primary'), 'primary')
            copy_storage(self.workload_path, primary.fs_path)
            self.own(primary).start()
            self.zrsd_primary = primary
        return self.zrsd_primary

    def upstream(self, pair):
        return self.zrsd() if pair == 'b' else self.zc()

    def python(self):
        if self.peer_python is None:
            started = time.monotonic()
            self.peer_python = self.peers.peer_python()
            spent = time.monotonic() - started
            if spent > 2:
                log('peer venv (zc.zrs on ZODB 5.5.1) ready in %.0f s'
                    % spent)
        return self.peer_python

    def launch_zrsd(self, node):
        """Start a zrsd node without waiting (an empty replica serves ZEO
        only once its first transaction arrived).  Its config logs
        `%(created)f` time stamps (ZConfig's asctime has whole seconds)."""
        with open(node.config_path, 'w') as f:
            f.write(config_text(
                node.zeo_port, node.fs_path, node.upstream, node.repl_port,
                node.blob_dir, log_format=PRECISE_LOG_FORMAT))
        node.starts += 1
        node.process = self.support.Process(
            [os.path.join(self.support.BIN, 'zrsd'), '-C', node.config_path],
            node.log_path)
        return node

    def start_zrsd(self, node, timeout=120):
        """Start a zrsd node that has data; wait until it serves."""
        self.launch_zrsd(node)
        node.process.wait_for_log(' over ZEO at ', timeout)
        if node.repl_port:
            node.process.wait_for_log('serving ZRS to secondaries', timeout)
        return node

    def workers_pool(self):
        if self.workers is None:
            self.workers = Workers(max(READ_CLIENTS))
        return self.workers

    def reset_workers(self):
        """After a failure: new worker processes (a failed exchange leaves
        the pipes out of step)."""
        if self.workers is not None:
            self.workers.close(force=True)
            self.workers = None

    # -- 1. catch-up ------------------------------------------------------

    def catchup(self, pair, round_no, keep):
        """One catch-up measurement; returns a result dict."""
        directory = self.path('catchup', '%s-%d' % (pair, round_no))
        if pair in ('a', 'b'):
            result = self.catchup_zrsd(pair, directory, keep)
        elif pair == 'c':
            result = self.catchup_zczrs_secondary(directory, keep)
        elif pair == 'd':
            result = self.catchup_copy(directory)
        else:
            result = self.catchup_bare_stream()
        if not keep:
            remove_data_files(directory)
        return result

    def catchup_zrsd(self, pair, directory, keep):
        primary = self.upstream(pair)
        primary_cpu = cpu_seconds(primary.process.pid)
        node = self.own(self.zrsd_nodes.ZrsdNode(
            directory, 'replica', upstream=primary.repl_port))
        launched = time.monotonic()
        self.launch_zrsd(node)
        try:
            start_cpu = cpu_after_log(node.process, 'connected (zrs')
            done = wait_served(node.zeo_port, self.last_tid,
                               check_alive(node.process),
                               timeout=self.catchup_timeout())
            replica_cpu = cpu_seconds(node.process.pid) - start_cpu
            primary_cpu = cpu_seconds(primary.process.pid) - primary_cpu
            connected = log_time(node.log(), 'connected (zrs')
            loaded = verify_load(node.zeo_port, self.last_oid,
                                 self.last_tid)
        except BaseException:
            node.close()        # it must not replicate during what follows
            raise
        node.stop()
        if keep:
            self.kept[pair] = node
        return dict(seconds=done - connected, startup=connected - launched,
                    verified=loaded, replica_cpu=replica_cpu,
                    primary_cpu=primary_cpu,
                    file_bytes=os.path.getsize(node.fs_path))

    def catchup_zczrs_secondary(self, directory, keep):
        primary = self.zc()
        python = self.python()
        primary_cpu = cpu_seconds(primary.process.pid)
        secondary = self.own(zczrs_secondary(self.peers)(
            directory, primary.repl_port))
        launched = time.monotonic()
        try:
            secondary.start(python)
            start_cpu = cpu_after_log(secondary.process, ': Connected')
            done = wait_served(secondary.zeo_port, self.last_tid,
                               check_alive(secondary.process),
                               timeout=self.catchup_timeout())
            replica_cpu = cpu_seconds(secondary.process.pid) - start_cpu
            primary_cpu = cpu_seconds(primary.process.pid) - primary_cpu
            connected = log_time(secondary.log(), ': Connected')
            loaded = verify_load(secondary.zeo_port, self.last_oid,
                                 self.last_tid)
        except BaseException:
            secondary.close()
            raise
        secondary.stop()
        if keep:
            self.kept['c'] = secondary
        return dict(seconds=done - connected, startup=connected - launched,
                    verified=loaded, replica_cpu=replica_cpu,
                    primary_cpu=primary_cpu,
                    file_bytes=os.path.getsize(secondary.fs_path))

    def catchup_copy(self, directory):
        """ZODB's copyTransactionsFrom into a new FileStorage, in this
        process (FileStorage fsyncs every transaction)."""
        os.makedirs(directory, exist_ok=True)
        source = ZODB.FileStorage.FileStorage(self.workload_path,
                                              read_only=True)
        target = ZODB.FileStorage.FileStorage(
            os.path.join(directory, 'copy.fs'), create=True)
        try:
            cpu = time.process_time()
            started = time.monotonic()
            target.copyTransactionsFrom(source)
            done = time.monotonic()
            cpu = time.process_time() - cpu
            verified = target.lastTransaction() == self.last_tid
        finally:
            target.close()
            source.close()
        return dict(seconds=done - started, verified=verified,
                    replica_cpu=cpu,
                    file_bytes=os.path.getsize(
                        os.path.join(directory, 'copy.fs')))

    def catchup_bare_stream(self):
        primary = self.zc()
        primary_cpu = cpu_seconds(primary.process.pid)
        result = bare_stream(primary.repl_port, self.last_tid,
                             timeout=self.catchup_timeout())
        result['primary_cpu'] = cpu_seconds(primary.process.pid) - primary_cpu
        return result

    def catchup_timeout(self):
        return max(300, self.meta['transactions'] / 20)

    # -- 2. lag -----------------------------------------------------------

    def replica_for(self, pair):
        """A running replica of `pair`'s primary, caught up; the one kept
        from the catch-up phase if there is one."""
        primary = self.upstream(pair)
        replica = self.kept.get(pair)
        if replica is None:
            directory = self.path('replica-' + pair)
            if pair == 'c':
                replica = self.own(zczrs_secondary(self.peers)(
                    directory, primary.repl_port))
            else:
                replica = self.own(self.zrsd_nodes.ZrsdNode(
                    directory, 'replica', upstream=primary.repl_port))
            self.kept[pair] = replica
        if pair == 'c':
            replica.primary_port = primary.repl_port
            replica.start(self.python())
        else:
            replica.upstream = primary.repl_port
            self.start_zrsd(replica)
        target = served_tid(primary.zeo_port)
        if target is None:
            raise RuntimeError('the primary does not answer on its ZEO port '
                               '(see its log)')
        wait_served(replica.zeo_port, target, check_alive(replica.process),
                    timeout=self.catchup_timeout())
        return primary, replica

    def lag(self, pair, rates, seconds):
        """A lag session on `pair`: for each rate, `seconds` of commits."""
        primary, replica = self.replica_for(pair)
        conn = self.workers_pool().conns[0]
        writers = []
        try:
            for _ in range(max(writer_count(rate) for rate in rates)):
                writers.append(Writer(ZEO.client(primary.zeo_address,
                                                 wait_timeout=60)))
            setup_tid = max(writer.setup() for writer in writers)
            wait_served(replica.zeo_port, setup_tid,
                        check_alive(replica.process), timeout=60)
            conn.send(('lag', ('127.0.0.1', replica.zeo_port),
                       [oid for writer in writers for oid in writer.oids]))
            Workers.receive(conn)
            probe = None
            if self.args.lag_probe:
                probe = self.workers_pool().conns[1]
                probe.send(('probe', primary.repl_port, setup_tid))
                Workers.receive(probe)
            run_writers(writers, 100, 0.2)     # warm-up, not measured
            sessions = {}
            for rate in rates:
                time.sleep(0.2)
                sessions[rate] = run_writers(writers, rate, seconds)
            conn.send(('stop', max(writer.last_tid for writer in writers),
                       10.0))
            seen = Workers.receive(conn)
            streamed = {}
            if probe is not None:
                probe.send(('stop',))
                streamed = Workers.receive(probe)
        finally:
            for writer in writers:
                writer.storage.close()
        replica.stop()
        results = {}
        for rate, (commits, achieved, count) in sessions.items():
            visible, notified, missing, stale = [], [], 0, 0
            for tid, committed, _ in commits:
                entry = seen.get(tid)
                if entry is None:
                    missing += 1
                elif not entry[2]:
                    stale += 1
                else:
                    notified.append((entry[0] - committed) * 1000)
                    visible.append((entry[1] - committed) * 1000)
            samples = []
            for tid, committed, duration in commits:
                entry = seen.get(tid)
                if entry is not None and entry[2]:
                    samples.append([round(committed - commits[0][1], 4),
                                    round((entry[0] - committed) * 1000, 3),
                                    round((entry[1] - committed) * 1000, 3),
                                    round(duration * 1000, 3)])
                    if streamed:
                        samples[-1].append(round(
                            (streamed[tid] - committed) * 1000, 3)
                            if tid in streamed else None)
            probe = {}
            if streamed:
                stream = sorted(x[4] for x in samples if x[4] is not None)
                probe = dict(
                    stream_p50=percentile(stream, 50),
                    stream_p99=percentile(stream, 99),
                    stream_max=stream[-1] if stream else None,
                    over_15ms_sent_late=sum(
                        1 for x in samples if x[1] > 15 and x[4] is not None
                        and x[4] > 15))
            visible.sort()
            notified.sort()
            commit_ms = sorted(c[2] * 1000 for c in commits)
            results[rate] = dict(
                commits=len(commits), achieved_rate=achieved, writers=count,
                missing=missing, stale=stale,
                p50=percentile(notified, 50), p90=percentile(notified, 90),
                p99=percentile(notified, 99),
                max=notified[-1] if notified else None,
                over_15ms=sum(1 for v in notified if v > 15),
                loaded_p50=percentile(visible, 50),
                loaded_p99=percentile(visible, 99),
                loaded_max=visible[-1] if visible else None,
                commit_p50=percentile(commit_ms, 50),
                commit_p99=percentile(commit_ms, 99),
                first_commit_epoch=commits[0][1] + time.time() -
                time.monotonic(),
                samples=samples, **probe)
        return results

    # -- 3. reads ---------------------------------------------------------

    def plain_runzeo(self):
        directory = self.path('runzeo')
        os.makedirs(directory, exist_ok=True)
        fs_path = os.path.join(directory, 'plain.fs')
        copy_storage(self.workload_path, fs_path)
        port = self.support.free_port()
        config = os.path.join(directory, 'runzeo.conf')
        with open(config, 'w') as f:
            f.write(RUNZEO_CONFIG % dict(port=port, fs_path=fs_path))
        proc = self.own(self.support.Process(
            [os.path.join(self.support.BIN, 'runzeo'), '-C', config],
            os.path.join(directory, 'runzeo.log')))
        proc.wait_for_log("listening on ('127.0.0.1', %d)" % port, 120)
        return port, proc

    def reads(self, port, proc, clients, seconds, seed):
        """Random loads from `clients` worker processes for `seconds`;
        returns loads/s, server CPU µs per load and the server's own count
        of loads (ruok) for the window."""
        conns = self.workers_pool().conns[:clients]
        for i, conn in enumerate(conns):
            conn.send(('reads', ('127.0.0.1', port), self.meta['max_oid'],
                       seed * 100 + i, seconds))
        for conn in conns:
            Workers.receive(conn)
        served_before = server_status(port)['loads']
        cpu_before = cpu_seconds(proc.pid)
        for conn in conns:
            conn.send('go')
        answers = [Workers.receive(conn) for conn in conns]
        cpu = cpu_seconds(proc.pid) - cpu_before
        served = server_status(port)['loads'] - served_before
        loads = sum(a[0] for a in answers)
        rate = sum(a[0] / a[1] for a in answers)
        return dict(loads=loads, loads_per_s=rate, server_loads=served,
                    cpu_seconds=cpu,
                    cpu_us_per_load=cpu / served * 1e6 if served else None)

    # -- 4. memory --------------------------------------------------------

    def memory(self, blob_mb):
        """Peak RSS of a zrsd replica (blob-dir) of a zrsd primary (blob-dir)
        while it replicates a 100 MB transaction, then a `blob_mb` blob."""
        import transaction
        from ZODB.blob import Blob
        directory = self.path('memory')
        nodes = self.zrsd_nodes
        primary = self.own(nodes.ZrsdNode(
            os.path.join(directory, 'primary'), 'primary', blobs=True))
        primary.start()
        db = ZEO.DB(primary.zeo_address, blob_dir=primary.blob_dir,
                    shared_blob_dir=True)
        results = {}
        try:
            replica = self.own(nodes.ZrsdNode(
                os.path.join(directory, 'replica'), 'replica',
                upstream=primary.repl_port, blobs=True))
            replica.start()
            wait_served(replica.zeo_port, served_tid(primary.zeo_port),
                        check_alive(replica.process), timeout=60)
            pid = replica.process.pid
            alive = check_alive(replica.process)
            results['baseline_rss_mb'] = vm_status(pid)['VmRSS'] / MB

            # A 100 MB transaction: 10 records of 10 MB, raw storage API.
            rng = random.Random(100)
            chunk = rng.randbytes(BIG_TXN_RECORD_MB << 20)
            meta_pickle = record_meta()
            storage = db.storage
            hwm_reset = reset_peak_rss(pid)
            with nodes.MemorySampler(pid) as sampler:
                t = TransactionMetaData('bench', '100 MB transaction')
                storage.tpc_begin(t)
                for k in range(BIG_TXN_RECORDS):
                    storage.store(
                        storage.new_oid(), z64, meta_pickle + pickle.dumps(
                            {'data': {'payload': struct.pack('>Q', k) +
                                      chunk}}, 3), '', t)
                started = time.monotonic()
                storage.tpc_vote(t)
                tid = storage.tpc_finish(t)
                committed = time.monotonic()
                done = wait_served(replica.zeo_port, tid, alive, 300)
            del chunk
            results['txn'] = dict(
                mb=BIG_TXN_RECORDS * BIG_TXN_RECORD_MB,
                peak_rss_mb=self.peak(pid, hwm_reset, sampler) / MB,
                sampled_peak_rss_mb=sampler.peak_rss / MB,
                hwm_reset=hwm_reset, commit_seconds=committed - started,
                replicated_seconds=done - committed)

            # A big blob, written in 1 MB chunks into the primary's blob
            # directory (a shared blob dir: no upload over ZEO).
            free = shutil.disk_usage(directory).free
            if free < BLOB_MIN_FREE:
                results['blob'] = dict(
                    skipped='only %.1f GB free on %s (need %.0f GB)' % (
                        free / MB / 1024, directory, BLOB_MIN_FREE >> 30))
                return results
            pool = random.Random(1024).randbytes(POOL_SIZE)
            tm = transaction.TransactionManager()
            conn = db.open(tm)
            try:
                blob = conn.root()['big'] = Blob()
                started = time.monotonic()
                with blob.open('w') as f:
                    for k in range(blob_mb):
                        offset = (k * 7919 * 4096) % (POOL_SIZE - (1 << 20))
                        f.write(struct.pack('>Q', k))
                        f.write(pool[offset:offset + (1 << 20) - 8])
                written = time.monotonic()
                hwm_reset = reset_peak_rss(pid)
                with nodes.MemorySampler(pid) as sampler:
                    tm.get().note('a %d MB blob' % blob_mb)
                    tm.commit()
                    committed = time.monotonic()
                    tid = conn.root()._p_jar.db().lastTransaction()
                    done = wait_served(replica.zeo_port, tid, alive, 600)
            finally:
                tm.abort()
                conn.close()
            results['blob'] = dict(
                mb=blob_mb,
                peak_rss_mb=self.peak(pid, hwm_reset, sampler) / MB,
                sampled_peak_rss_mb=sampler.peak_rss / MB,
                hwm_reset=hwm_reset, write_seconds=written - started,
                commit_seconds=committed - written,
                replicated_seconds=done - committed)
            results['primary_peak_rss_mb'] = vm_status(
                primary.process.pid).get('VmHWM', 0) / MB
            replica.stop()
        finally:
            db.close()
            primary.stop()
            shutil.rmtree(directory, ignore_errors=True)
        return results

    @staticmethod
    def peak(pid, hwm_reset, sampler):
        """Peak RSS over the measurement: VmHWM if it could be reset before,
        else the sampled peak (10 ms samples)."""
        if hwm_reset:
            return max(vm_status(pid).get('VmHWM', 0), sampler.peak_rss)
        return sampler.peak_rss


LOG_SECTION = """\
<eventlog>
  level INFO
  <logfile>
    path STDOUT
    format %%(created).6f %%(levelname)s %%(name)s %%(message)s
  </logfile>
</eventlog>
"""

# zrsd logs with sub-second time stamps (ZConfig's asctime has whole
# seconds): catch-up is timed from its "connected" line.
PRECISE_LOG_FORMAT = '%(created).6f %(levelname)s %(name)s %(message)s'

RUNZEO_CONFIG = """\
<zeo>
  address 127.0.0.1:%(port)s
</zeo>
<filestorage 1>
  path %(fs_path)s
</filestorage>
""" + LOG_SECTION


def zczrs_secondary(peers):
    """tests/peers.py's ZcZrsSecondary, logging `%(created)f` stamps."""

    class ZcZrsSecondary(peers.ZcZrsSecondary):

        def start(self, python, timeout=60.0):
            with open(self.script_path, 'w') as f:
                f.write(peers.SECONDARY_SCRIPT)
            template = peers.SECONDARY_CONFIG.replace(
                '%%(asctime)s', '%%(created).6f')
            assert '%%(created).6f' in template
            with open(self.config_path, 'w') as f:
                f.write(template % dict(zeo_port=self.zeo_port,
                                        fs_path=self.fs_path))
            self.process = peers.Process(
                [python, self.script_path,
                 '127.0.0.1:%d' % self.primary_port, '-C', self.config_path],
                self.log_path, env=peers._peer_env(), cwd=self.directory)
            self.process.wait_for_log(
                "listening on ('127.0.0.1', %d)" % self.zeo_port, timeout)
            return self

    return ZcZrsSecondary


def writer_count(rate):
    """Writer connections for `rate` commits/s: one ZEO commit takes 1-3 ms
    here (two round trips and the primary's fsync), so one synchronous
    writer cannot commit 500 times a second; each does at most
    LAG_WRITER_RATE."""
    return max(1, math.ceil(rate / LAG_WRITER_RATE))


class Writer:
    """Commits one small object per transaction through its own ZEO client
    (the lag test's writer)."""

    def __init__(self, storage):
        self.storage = storage
        self.oids = []
        self.serials = {}
        self.count = 0
        self.last_tid = None
        self.meta_pickle = record_meta()

    def data(self):
        return self.meta_pickle + pickle.dumps(
            {'data': {'n': self.count, 'payload': b'x' * 100}}, 3)

    def setup(self):
        """Create the writer's objects; returns the tid."""
        storage = self.storage
        t = TransactionMetaData('bench', 'lag objects')
        storage.tpc_begin(t)
        for _ in range(LAG_OBJECTS):
            oid = storage.new_oid()
            self.oids.append(oid)
            storage.store(oid, z64, self.data(), '', t)
        storage.tpc_vote(t)
        tid = storage.tpc_finish(t)
        for oid in self.oids:
            self.serials[oid] = tid
        self.last_tid = tid
        return tid

    def commit(self):
        """Change the next of the writer's objects; returns (tid, time
        tpc_finish returned, commit duration)."""
        storage = self.storage
        oid = self.oids[self.count % len(self.oids)]
        self.count += 1
        data = self.data()
        began = time.monotonic()
        t = TransactionMetaData()
        storage.tpc_begin(t)
        storage.store(oid, self.serials[oid], data, '', t)
        storage.tpc_vote(t)
        tid = storage.tpc_finish(t)
        finished = time.monotonic()
        self.serials[oid] = tid
        self.last_tid = tid
        return tid, finished, finished - began


def run_writers(writers, rate, seconds):
    """Commit at `rate` per second for `seconds`, one commit at a time per
    writer, `writer_count(rate)` writers (threads) taking turns: commit i is
    due at start + i / rate and goes to writer i % count.  A writer behind
    its schedule commits at once until it has caught up.  Returns
    (commits sorted by time, achieved rate, writers used)."""
    n = max(1, int(rate * seconds))
    count = min(len(writers), writer_count(rate))
    start = time.monotonic() + 0.02
    done = [[] for _ in range(count)]
    errors = []

    def work(k):
        try:
            for i in range(k, n, count):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                done[k].append(writers[k].commit())
        except Exception:
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=work, args=(k,), daemon=True,
                                name='writer-%d' % k) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError('writer failed:\n' + errors[0])
    commits = sorted((c for per in done for c in per), key=lambda c: c[1])
    elapsed = commits[-1][1] - start
    return commits, (n / elapsed if n > 1 and elapsed > 0 else rate), count


def bare_stream(port, last_tid, timeout):
    """Consume a ZRS primary's stream from the start and discard it.

    Sends the handshake (`zrs2.0`, eight zero bytes), then reads frames:
    after an S message one data frame follows, after a B message a data
    frame and `nblocks` blob frames.  Only T messages (for the tid) and B
    messages are unpickled; the message type is the 7th byte of the
    protocol-1 pickle `(X\\x01\\0\\0\\0T...`.  Done at the C message that
    follows the T of `last_tid`.
    """
    sock = socket.create_connection(('127.0.0.1', port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cpu = time.process_time()
    started = time.monotonic()
    sock.sendall(struct.pack('>I', 6) + b'zrs2.0' + struct.pack('>I', 8) +
                 z64)
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    start = end = 0
    raw = 0                 # data frames still expected
    tid = None
    frames = transactions = 0
    total = 0
    prefix = b'(X\x01\x00\x00\x00'
    unpack = struct.unpack_from
    try:
        while True:
            need = 4
            while end - start >= 4:
                (size,) = unpack('>I', buf, start)
                if end - start - 4 < size:
                    need = size + 4
                    break
                first = start + 4
                start = first + size
                frames += 1
                if raw:
                    raw -= 1
                    continue
                if buf[first:first + 6] == prefix:
                    kind = buf[first + 6]
                else:
                    kind = ord(pickle.loads(view[first:start])[0])
                if kind == 0x53:            # S
                    raw = 1
                elif kind == 0x54:          # T
                    tid = pickle.loads(view[first:start])[1][0]
                    transactions += 1
                elif kind == 0x43:          # C
                    if tid == last_tid:
                        done = time.monotonic()
                        return dict(
                            seconds=done - started, verified=True,
                            transactions=transactions, frames=frames,
                            stream_bytes=total + start,
                            replica_cpu=time.process_time() - cpu)
                elif kind == 0x42:          # B
                    raw = 1 + pickle.loads(view[first:start])[1][4]
            # Need more bytes: compact, grow if a frame is larger.
            if start:
                total += start
                view[:end - start] = view[start:end]
                end -= start
                start = 0
            if need > len(buf):
                grown = bytearray(max(need, 2 * len(buf)))
                grown[:end] = buf[:end]
                buf, view = grown, memoryview(grown)
            received = sock.recv_into(view[end:])
            if not received:
                raise RuntimeError('the primary closed the stream after '
                                   '%d transactions' % transactions)
            end += received
    finally:
        sock.close()


# --------------------------------------------------------------------------
# Running the phases


def run_catchup(bench, rounds, results):
    out = results['catchup'] = {pair: [] for pair in PAIRS}
    order = list(PAIRS)
    for r in range(rounds):
        rotated = order[r % len(order):] + order[:r % len(order)]
        for pair in rotated:
            keep = (r == rounds - 1) and pair in LAG_PAIRS
            try:
                result = bench.catchup(pair, r, keep)
            except Exception as exc:
                log('catch-up %s round %d FAILED: %s' % (pair, r + 1, exc))
                traceback.print_exc(file=sys.stderr)
                result = dict(error=str(exc))
            result['round'] = r + 1
            out[pair].append(result)
            if 'seconds' in result:
                log('catch-up round %d %-42s %7.2f s%s' % (
                    r + 1, PAIRS[pair], result['seconds'],
                    '' if result.get('verified') else '  (NOT VERIFIED)'))


def run_lag(bench, rounds, seconds, results, pairs):
    out = results['lag'] = {pair: [] for pair in pairs}
    for r in range(rounds):
        rotated = pairs[r % len(pairs):] + pairs[:r % len(pairs)]
        for pair in rotated:
            try:
                result = bench.lag(pair, LAG_RATES, seconds)
            except Exception as exc:
                log('lag %s round %d FAILED: %s' % (pair, r + 1, exc))
                traceback.print_exc(file=sys.stderr)
                result = dict(error=str(exc))
                replica = bench.kept.get(pair)
                if replica is not None and replica.process is not None:
                    replica.process.close()
                bench.reset_workers()
            out[pair].append(dict(round=r + 1, rates=result)
                             if 'error' not in result else result)
            for rate, res in result.items():
                if isinstance(res, dict):
                    log('lag round %d %-24s %3d/s: p50 %.2f p99 %.2f max '
                        '%.2f ms, missing %d, stale %d' % (
                            r + 1, LAG_PAIRS[pair], rate, res['p50'] or -1,
                            res['p99'] or -1, res['max'] or -1,
                            res['missing'], res['stale']))


def run_reads(bench, rounds, seconds, results):
    out = results['reads'] = {'zrsd': {}, 'runzeo': {}}
    primary, replica = bench.replica_for('b')
    plain_port, plain_proc = bench.plain_runzeo()
    servers = {'zrsd': (replica.zeo_port, replica.process),
               'runzeo': (plain_port, plain_proc)}
    for r in range(rounds):
        names = ['zrsd', 'runzeo'] if r % 2 == 0 else ['runzeo', 'zrsd']
        for clients in READ_CLIENTS:
            for name in names:
                port, proc = servers[name]
                try:
                    result = bench.reads(port, proc, clients, seconds, r)
                except Exception as exc:
                    log('reads %s %d clients FAILED: %s' % (
                        name, clients, exc))
                    traceback.print_exc(file=sys.stderr)
                    result = dict(error=str(exc))
                    bench.reset_workers()
                result['round'] = r + 1
                out[name].setdefault(str(clients), []).append(result)
                if 'loads_per_s' in result:
                    log('reads round %d %-6s %d client(s): %8.0f loads/s, '
                        '%.1f µs CPU/load (%d of %d loads reached the '
                        'server)' % (
                            r + 1, name, clients, result['loads_per_s'],
                            result['cpu_us_per_load'],
                            result['server_loads'], result['loads']))
    plain_proc.stop()
    replica.stop()


# --------------------------------------------------------------------------
# Summaries and report


def ratio_rounds(first, second, key, invert=False):
    """Per-round ratios first/second of `key` (rounds matched by index)."""
    values = []
    for a, b in zip(first, second):
        if a.get(key) and b.get(key):
            values.append(b[key] / a[key] if invert else a[key] / b[key])
    return summary(values)


def met(value, target):
    if value is None:
        return None
    op, limit = target.split()
    limit = float(limit)
    return value >= limit if op == '>=' else value <= limit


def summarise(results, meta):
    """Median/min/max of every figure, ratios per round, targets."""
    s = {}
    targets = []

    def target(name, label, value, worst=None):
        spec = TARGETS[name]
        targets.append(dict(name=name, label=label, value=value,
                            worst=worst, target=spec, met=met(value, spec)))

    catchup = results.get('catchup')
    if catchup:
        mb = meta['file_bytes'] / MB
        rows = {}
        for pair, runs in catchup.items():
            sec = summary([run.get('seconds') for run in runs])
            if sec is None:
                rows[pair] = dict(errors=[run.get('error') for run in runs])
                continue
            rows[pair] = dict(
                seconds=sec, txn_per_s=meta['transactions'] / sec['median'],
                mb_per_s=mb / sec['median'],
                startup=summary([run.get('startup') for run in runs]),
                replica_cpu=summary([run.get('replica_cpu') for run in runs]),
                primary_cpu=summary([run.get('primary_cpu') for run in runs]),
                verified=all(run.get('verified') for run in runs
                             if 'seconds' in run),
                errors=[run['error'] for run in runs if 'error' in run])
        s['catchup'] = rows
        # rate ratio x/y = time(y) / time(x), per round.
        ae = ratio_rounds(catchup['a'], catchup['e'], 'seconds', invert=True)
        bc = ratio_rounds(catchup['b'], catchup['c'], 'seconds', invert=True)
        s['catchup_ratios'] = {'a/e': ae, 'b/c': bc,
                               'a/c': ratio_rounds(catchup['a'], catchup['c'],
                                                   'seconds', invert=True),
                               'b/e': ratio_rounds(catchup['b'], catchup['e'],
                                                   'seconds', invert=True),
                               'b/d': ratio_rounds(catchup['b'], catchup['d'],
                                                   'seconds', invert=True)}
        target('catchup_a_over_e',
               'catch-up rate zc.zrs->zrsd / bare zc.zrs stream',
               ae and ae['median'], ae and ae['min'])
        target('catchup_b_over_c',
               'catch-up rate zrsd->zrsd / zc.zrs->zc.zrs',
               bc and bc['median'], bc and bc['min'])

    lag = results.get('lag')
    if lag:
        rows = {}
        for pair, runs in lag.items():
            for rate in LAG_RATES:
                per = [run['rates'][rate] for run in runs
                       if 'rates' in run and rate in run['rates']]
                if not per:
                    continue
                row = dict(
                    rounds=len(per), writers=per[0].get('writers'),
                    commits=sum(p['commits'] for p in per),
                    missing=sum(p['missing'] for p in per),
                    stale=sum(p['stale'] for p in per),
                    over_15ms=sum(p['over_15ms'] for p in per))
                for key in ('achieved_rate', 'p50', 'p90', 'p99', 'max',
                            'loaded_p50', 'loaded_p99', 'loaded_max',
                            'commit_p50', 'commit_p99', 'stream_p50',
                            'stream_p99', 'stream_max'):
                    row[key] = summary([p.get(key) for p in per])
                if any('over_15ms_sent_late' in p for p in per):
                    row['over_15ms_sent_late'] = sum(
                        p.get('over_15ms_sent_late', 0) for p in per)
                rows['%s@%d' % (pair, rate)] = row
        s['lag'] = rows
        s['lag_errors'] = {pair: [run['error'] for run in runs
                                  if 'error' in run]
                           for pair, runs in lag.items()}
        for pair in ('b', 'a'):
            row = rows.get('%s@500' % pair)
            if row is None:
                continue
            target('lag_500_p99_ms', 'lag p99 at 500/s, %s' % LAG_PAIRS[pair],
                   row['p99']['median'], row['p99']['max'])
            target('lag_500_max_ms', 'lag max at 500/s, %s' % LAG_PAIRS[pair],
                   row['max']['median'], row['max']['max'])
        for pair, row in rows.items():
            if row['missing'] or row['stale']:
                targets.append(dict(
                    name='lag_consistency', label='lag %s: missing/stale'
                    % pair, value=row['missing'] + row['stale'],
                    target='== 0', met=False, worst=None))

    reads = results.get('reads')
    if reads:
        rows = {}
        for name, per_clients in reads.items():
            for clients, runs in per_clients.items():
                rows['%s/%s' % (name, clients)] = dict(
                    loads_per_s=summary([r.get('loads_per_s')
                                         for r in runs]),
                    cpu_us_per_load=summary([r.get('cpu_us_per_load')
                                             for r in runs]),
                    server_fraction=summary([
                        r['server_loads'] / r['loads'] for r in runs
                        if r.get('loads')]))
        s['reads'] = rows
        s['reads_ratios'] = {}
        for clients in READ_CLIENTS:
            zrsd = reads['zrsd'].get(str(clients), [])
            plain = reads['runzeo'].get(str(clients), [])
            rate = ratio_rounds(zrsd, plain, 'loads_per_s')
            cpu = ratio_rounds(zrsd, plain, 'cpu_us_per_load')
            s['reads_ratios'][str(clients)] = dict(loads_per_s=rate,
                                                   cpu_us_per_load=cpu)
            target('reads_ratio', 'reads/s zrsd / runzeo, %d client%s' % (
                clients, 's' if clients > 1 else ''),
                rate and rate['median'], rate and rate['min'])
            target('reads_cpu_ratio', 'server µs/load zrsd / runzeo, %d '
                   'client%s' % (clients, 's' if clients > 1 else ''),
                   cpu and cpu['median'], cpu and cpu['max'])

    memory = results.get('memory')
    if memory and 'error' not in memory:
        for key, label in (('txn', '100 MB transaction'),
                           ('blob', '%d MB blob' % memory.get(
                               'blob', {}).get('mb', BLOB_MB))):
            part = memory.get(key, {})
            if 'peak_rss_mb' in part:
                target('memory_mb', 'replica peak RSS, %s' % label,
                       part['peak_rss_mb'])
    s['targets'] = targets
    return s


def fmt(value, digits=2):
    if value is None:
        return '-'
    return '%.*f' % (digits, value)


def fmt_range(stat, digits=2, scale=1.0):
    if not stat:
        return '-'
    return '%s (%s-%s)' % (fmt(stat['median'] * scale, digits),
                           fmt(stat['min'] * scale, digits),
                           fmt(stat['max'] * scale, digits))


def report(results, s, meta, args):
    out = []
    p = out.append
    p('')
    p('zrsd benchmark: preset %s, seed %d, %d round(s), %s' % (
        args.preset, args.seed, args.rounds, results['started']))
    p('workload: %d transactions, %d records, %d objects, %.1f MB '
      '(%d with extensions, %d of 5 MB)' % (
          meta['transactions'], meta['records'], meta['objects'],
          meta['file_bytes'] / MB, meta['extension_transactions'],
          meta['big_transactions']))
    p('machine: %d CPUs; after each phase, 1-minute load average / CPU '
      'pressure (%% of time tasks waited for a CPU, 60 s): %s' % (
          os.cpu_count(), ', '.join(
              '%s %.1f/%s' % (name, load,
                              '-' if pressure is None
                              else '%.0f%%' % pressure)
              for name, load, pressure in results['load'])))
    f = results['fsync_ms']
    p('fsync of a small append on the replicas\' disk (ms): p50 %.2f, '
      'p90 %.2f, p99 %.2f, max %.2f' % (f['p50'], f['p90'], f['p99'],
                                        f['max']))
    p('primaries\' files: %s' % (
        'tmpfs (%s)' % results['primary_dir'] if results['primary_dir']
        else 'on disk, in the run directory'))
    p('figures: median (min-max) over rounds; ratios are computed per round')

    if 'catchup' in s:
        p('')
        p('1. Catch-up: empty replica -> last tid served by its ZEO server')
        p('   %-42s %-22s %9s %8s %8s %8s' % (
            '', 'seconds', 'txn/s', 'MB/s', 'startup', 'CPU s'))
        for pair, label in PAIRS.items():
            row = s['catchup'].get(pair)
            if not row or 'seconds' not in row:
                p('   %-42s FAILED: %s' % (label, '; '.join(
                    e for e in (row or {}).get('errors', []) if e)))
                continue
            p('   %-42s %-22s %9.0f %8.1f %8s %8s%s' % (
                label, fmt_range(row['seconds']), row['txn_per_s'],
                row['mb_per_s'],
                fmt(row['startup'] and row['startup']['median'], 1),
                fmt(row['replica_cpu'] and row['replica_cpu']['median'], 1),
                '' if row['verified'] else '  NOT VERIFIED'))
        ratios = s['catchup_ratios']
        p('   rate ratios: (a)/(e) %s, (b)/(c) %s, (a)/(c) %s, (b)/(e) %s, '
          '(b)/(d) %s' % tuple(fmt_range(ratios[k]) for k in (
              'a/e', 'b/c', 'a/c', 'b/e', 'b/d')))

    if 'lag' in s:
        p('')
        p('2. Lag: writer\'s tpc_finish returned -> the invalidation reached '
          'a ZEO client of the replica (ms)')
        p('   %-24s %6s %8s %7s %-20s %-20s %-20s %-20s %5s %5s' % (
            'pair', 'rate', 'achieved', 'commits', 'p50', 'p90', 'p99',
            'max', 'miss', 'stale'))
        for pair, label in LAG_PAIRS.items():
            for error in s['lag_errors'].get(pair, []):
                p('   %-24s FAILED in a round: %s' % (
                    label, error.strip().splitlines()[-1]))
            for rate in LAG_RATES:
                row = s['lag'].get('%s@%d' % (pair, rate))
                if row is None:
                    continue
                p('   %-24s %6s %8.0f %7d %-20s %-20s %-20s %-20s %5d %5d' % (
                    label, '%d(%s)' % (rate, row['writers']),
                    row['achieved_rate']['median'],
                    row['commits'], fmt_range(row['p50']),
                    fmt_range(row['p90']), fmt_range(row['p99']),
                    fmt_range(row['max']), row['missing'], row['stale']))
        p('   then loaded at that tid (ms, p50 / p99 / max): %s' % ', '.join(
            '%s %s / %s / %s' % (key, fmt(row['loaded_p50']['median']),
                                 fmt(row['loaded_p99']['median']),
                                 fmt(row['loaded_max']['median']))
            for key, row in s['lag'].items() if row['loaded_p99']))
        if any(row.get('stream_p99') for row in s['lag'].values()):
            p('   --lag-probe: the primary sent the commit (ms, p50 / p99 / '
              'max), and of the commits over 15 ms, those the primary sent '
              'over 15 ms late: %s' % ', '.join(
                  '%s %s / %s / %s, %d of %d' % (
                      key, fmt(row['stream_p50']['median']),
                      fmt(row['stream_p99']['median']),
                      fmt(row['stream_max']['median']),
                      row['over_15ms_sent_late'], row['over_15ms'])
                  for key, row in s['lag'].items() if row.get('stream_p99')))
        p('   writer commit duration p50 / p99 (ms): %s' % ', '.join(
            '%s %s / %s' % (key, fmt(row['commit_p50']['median']),
                            fmt(row['commit_p99']['median']))
            for key, row in s['lag'].items() if row['commit_p50']))

    if 'reads' in s:
        p('')
        p('3. Reads: random ZEO loads, client cache %d KB' % (
            READ_CACHE_SIZE >> 10))
        p('   %-14s %7s %-28s %-22s %s' % (
            'server', 'clients', 'loads/s', 'server CPU µs/load',
            'reached server'))
        for clients in READ_CLIENTS:
            for name in ('zrsd', 'runzeo'):
                row = s['reads'].get('%s/%d' % (name, clients))
                if row is None or not row['loads_per_s']:
                    continue
                p('   %-14s %7d %-28s %-22s %s' % (
                    'zrsd replica' if name == 'zrsd' else 'plain runzeo',
                    clients, fmt_range(row['loads_per_s'], 0),
                    fmt_range(row['cpu_us_per_load'], 1),
                    fmt(row['server_fraction'] and
                        row['server_fraction']['median'] * 100, 1) + ' %'))
            ratio = s['reads_ratios'].get(str(clients), {})
            p('   ratio zrsd/runzeo, %d client(s): loads/s %s, µs/load %s' % (
                clients, fmt_range(ratio.get('loads_per_s')),
                fmt_range(ratio.get('cpu_us_per_load'))))

    memory = results.get('memory')
    if memory:
        p('')
        p('4. Memory: zrsd replica peak RSS (zrsd primary -> zrsd replica, '
          'both with blob-dir)')
        if 'error' in memory:
            p('   FAILED: %s' % memory['error'])
        else:
            p('   baseline RSS %.1f MB' % memory['baseline_rss_mb'])
            txn = memory.get('txn', {})
            if txn:
                p('   %d MB transaction: peak %.1f MB (replicated in %.2f s '
                  'after the commit)' % (txn['mb'], txn['peak_rss_mb'],
                                         txn['replicated_seconds']))
            blob = memory.get('blob', {})
            if 'skipped' in blob:
                p('   blob: SKIPPED: %s' % blob['skipped'])
            elif blob:
                p('   %d MB blob: peak %.1f MB (written in %.1f s, '
                  'replicated in %.2f s after the commit)' % (
                      blob['mb'], blob['peak_rss_mb'], blob['write_seconds'],
                      blob['replicated_seconds']))
            if 'primary_peak_rss_mb' in memory:
                p('   (primary peak RSS %.1f MB)'
                  % memory['primary_peak_rss_mb'])

    if s['targets']:
        p('')
        p('Targets (median over rounds; "worst" is the worst round)')
        for t in s['targets']:
            digits = 3 if t['name'] in ('catchup_a_over_e', 'catchup_b_over_c',
                                        'reads_ratio', 'reads_cpu_ratio') \
                else 2
            p('   %-52s %10s  target %-7s %-8s worst %s' % (
                t['label'], fmt(t['value'], digits), t['target'],
                {True: 'met', False: 'NOT MET', None: '-'}[t['met']],
                fmt(t['worst'], digits)))
    p('')
    return '\n'.join(out)


def environment():
    def version(name):
        try:
            from importlib.metadata import version as v
            return v(name)
        except Exception:
            return None
    try:
        rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                             cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = bool(subprocess.run(['git', 'status', '--porcelain'],
                                    cwd=ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except Exception:
        rev, dirty = None, None
    return dict(python=platform.python_version(), cpus=os.cpu_count(),
                machine=platform.machine(), kernel=platform.release(),
                load_average=os.getloadavg(), git=rev, git_dirty=dirty,
                zrsd=version('zrsd'), ZODB=version('ZODB'),
                ZEO=version('ZEO'), zc_zrs=version('zc.zrs'))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='zrsd benchmark (see docs/bench.md)')
    parser.add_argument('--preset', choices=sorted(PRESETS),
                        default='default')
    parser.add_argument('--seed', type=int, default=20261129)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--lag-seconds', type=float, default=None,
                        help='seconds of commits per rate per lag session '
                        '(default: 10, small preset 3)')
    parser.add_argument('--read-seconds', type=float, default=None,
                        help='seconds per read measurement (default: 5, '
                        'small preset 2)')
    parser.add_argument('--blob-mb', type=int, default=BLOB_MB,
                        help='size of the memory test blob (default 1024)')
    parser.add_argument('--phases', default='catchup,lag,reads,memory',
                        help='comma-separated subset of catchup, lag, '
                        'reads, memory')
    parser.add_argument('--no-reference-lag', action='store_true',
                        help='skip the zc.zrs -> zc.zrs lag reference')
    parser.add_argument('--lag-probe', action='store_true',
                        help='diagnostic: also follow each lag primary\'s '
                        'stream with a bare consumer and note when each '
                        'commit left it (adds a secondary to the primary)')
    parser.add_argument('--primaries-on-disk', action='store_true',
                        help='keep the primaries\' files in the run '
                        'directory instead of on tmpfs (/dev/shm)')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--keep', action='store_true',
                        help='keep the data files of the run directory')
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.lag_seconds is None:
        args.lag_seconds = preset['lag_seconds']
    if args.read_seconds is None:
        args.read_seconds = preset['read_seconds']
    phases = [p.strip() for p in args.phases.split(',') if p.strip()]
    unknown = set(phases) - {'catchup', 'lag', 'reads', 'memory'}
    if unknown:
        parser.error('unknown phase(s): %s' % ', '.join(sorted(unknown)))

    # Threads of this process (lag writers) hand the GIL over sooner.
    sys.setswitchinterval(0.0005)
    started = time.monotonic()
    path, meta = workload(args.preset, args.seed)
    bench = Bench(args, path, meta)
    results = dict(started=time.strftime('%Y-%m-%d %H:%M:%S'),
                   args=vars(args), workload=meta,
                   environment=environment(), run_dir=bench.dir)
    log('run directory %s%s' % (
        os.path.relpath(bench.dir, ROOT),
        ', primaries in %s' % bench.primary_dir if bench.primary_dir else ''))
    results['primary_dir'] = bench.primary_dir
    results['fsync_ms'] = fsync_probe(bench.dir)
    results['load'] = [('start',) + machine_load()]
    lag_pairs = [p for p in LAG_PAIRS
                 if not (p == 'c' and args.no_reference_lag)]
    try:
        if 'catchup' in phases:
            run_catchup(bench, args.rounds, results)
            results['load'].append(('catchup',) + machine_load())
        if 'lag' in phases:
            run_lag(bench, args.rounds, args.lag_seconds, results, lag_pairs)
            results['load'].append(('lag',) + machine_load())
        if 'reads' in phases:
            run_reads(bench, args.rounds, args.read_seconds, results)
            results['load'].append(('reads',) + machine_load())
        if 'memory' in phases:
            # Everything else is done: free the disk and tmpfs first.
            for primary in (bench.zc_primary, bench.zrsd_primary):
                if primary is not None and primary.running():
                    primary.stop()
            bench.close()
            bench.remove_primaries()
            if not args.keep:
                bench.remove_data()
            try:
                results['memory'] = bench.memory(args.blob_mb)
            except Exception as exc:
                log('memory FAILED: %s' % exc)
                traceback.print_exc(file=sys.stderr)
                results['memory'] = dict(error=str(exc))
            results['load'].append(('memory',) + machine_load())
    finally:
        bench.close()
        bench.remove_primaries()
        if not args.keep:
            bench.remove_data()
    results['seconds'] = round(time.monotonic() - started, 1)
    s = summarise(results, meta)
    results['summary'] = s
    text = report(results, s, meta, args)
    sys.stdout.write(text + '\n')
    sys.stdout.write('total %.0f s\n' % results['seconds'])
    # Every commit of the lag sessions goes to a file of its own (compact).
    samples = {}
    for pair, runs in results.get('lag', {}).items():
        for run in runs:
            for rate, res in run.get('rates', {}).items():
                samples['%s-%s-%s' % (pair, run['round'], rate)] = \
                    res.pop('samples', [])
    paths = [os.path.join(BENCH_DIR, 'results-%s.json' % bench.stamp)]
    if args.json:
        paths.append(args.json)
    if samples:
        results['lag_samples_file'] = paths[0][:-5] + '-lag-samples.json'
        with open(results['lag_samples_file'], 'w') as f:
            json.dump(dict(
                columns=['seconds since the first commit', 'lag ms',
                         'loaded ms', 'commit duration ms',
                         'primary sent ms (--lag-probe)'],
                sessions=samples), f, separators=(',', ':'))
    for out in paths:
        with open(out, 'w') as f:
            json.dump(results, f, indent=1, default=_json_default)
        log('results written to %s' % out)
    return 0


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(repr(value))


if __name__ == '__main__':
    sys.exit(main())
