"""The processes of one benchmark run: `Run` owns the run directory, the
primaries on copies of the workload, the replicas kept from the catch-up,
a plain runzeo and the worker processes (ZEO clients of their own)."""
import collections
import contextlib
import multiprocessing
import os
import shutil
import time
import traceback

from harness import peers
from harness.process import Node
from harness.zczrs import ZcZrsPrimary
from harness.zrsd_nodes import PlainZeoNode, ZrsdNode

from .measure import BENCH_DIR, cpu_seconds, log, served_tid, wait_served
from .workload import blob_dir_of, workload

# ZConfig's asctime has whole seconds.
PRECISE_LOG_FORMAT = '%(created).6f %(levelname)s %(name)s %(message)s'
WORKERS = 4                  # worker processes: the most a phase uses (reads)

# A primary and a replica kind ('zczrs' or 'zrsd') measured together;
# `key` names it in the results (rows of README's catch-up table).
Pair = collections.namedtuple('Pair', 'key primary replica label')
ZCZRS_TO_ZRSD = Pair('a', 'zczrs', 'zrsd', 'zc.zrs -> zrsd')
ZRSD_TO_ZRSD = Pair('b', 'zrsd', 'zrsd', 'zrsd -> zrsd')
ZCZRS_TO_ZCZRS = Pair('c', 'zczrs', 'zczrs', 'zc.zrs -> zc.zrs (ref)')
# The primaries: 'zczrs', 'zrsd', and 'zrsd-blobs' (the blob workload).
ZRSD_BLOBS = 'zrsd-blobs'


class ZcZrsReplica(peers.ZcZrsSecondary):
    """A zc.zrs secondary with precise log times, on the `python` set
    before (started like the other nodes: `start(timeout)`)."""

    log_format = PRECISE_LOG_FORMAT
    start = Node.start


def remove_data_files(top):
    """Delete the files under `top` but logs and configs, and `*.blobs`."""
    for directory, dirs, files in os.walk(top):
        for name in [name for name in dirs if name.endswith('.blobs')]:
            shutil.rmtree(os.path.join(directory, name))
            dirs.remove(name)
        for name in files:
            if not name.endswith(('.log', '.conf', '.py', '.txt')):
                os.remove(os.path.join(directory, name))


def copy_storage(source, node):
    """Copy a FileStorage, its index and its blobs for `node` to open."""
    for suffix in ('', '.index'):
        if os.path.exists(source + suffix):
            shutil.copyfile(source + suffix, node.fs_path + suffix)
    if getattr(node, 'blob_dir', None):
        shutil.copytree(blob_dir_of(source), node.blob_dir)


def worker_main(conn):
    """A worker process: `function(conn, *args)` for each `(function,
    args)` it is sent on the pipe `conn`, until None."""
    for function, args in iter(conn.recv, None):
        try:
            function(conn, *args)
        except Exception:
            conn.send(('error', traceback.format_exc()))


def receive(conn, timeout=120):
    """The next answer of a worker; raises on its failure or silence."""
    if not conn.poll(timeout):
        raise RuntimeError('a worker did not answer within %ds' % timeout)
    answer = conn.recv()
    if isinstance(answer, tuple) and answer and answer[0] == 'error':
        raise RuntimeError('worker failed:\n' + answer[1])
    return answer


def timed(conn, step, seconds, per_step=1):
    """In a worker, once set up: 'ready'; after 'go', `step()` (that many
    operations) until `seconds` passed; sends (operations, elapsed)."""
    conn.send('ready')
    conn.recv()
    operations, started = 0, time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        step()
        operations += per_step
    conn.send((operations, time.monotonic() - started))


def run_workers(run, node, function, args, counted=None):
    """`function(conn, *args[i])` (see `timed`) in worker i, started
    together once all are ready: (their operations, the sum of their
    rates, the CPU seconds of `node` meanwhile, and the increase of
    `counted()`, asked before and after, or None)."""
    conns = run.worker_conns()[:len(args)]
    for conn, each in zip(conns, args):
        conn.send((function, each))
    for conn in conns:
        receive(conn)
    count = counted() if counted else None
    cpu = cpu_seconds(node.pid)
    for conn in conns:
        conn.send('go')
    answers = [receive(conn) for conn in conns]
    cpu = cpu_seconds(node.pid) - cpu
    if counted:
        count = counted() - count
    return (sum(a[0] for a in answers), sum(a[0] / a[1] for a in answers),
            cpu, count)


class Run:
    """The servers of one run, in `directory` (default
    var/bench/run-TIMESTAMP/), on the workload at `workload_path`."""

    def __init__(self, args, workload_path, meta, directory=None,
                 blob_workload=None):
        self.args, self.workload_path, self.meta = args, workload_path, meta
        self.blob_source = blob_workload
        self.last_tid = bytes.fromhex(meta['last_tid'])
        self.stamp = time.strftime('%Y%m%d-%H%M%S')
        self.dir = directory or os.path.join(BENCH_DIR, 'run-' + self.stamp)
        os.makedirs(self.dir, exist_ok=directory is not None)
        # The primaries' files on tmpfs if it has room for two copies of
        # the workload (their fsyncs would compete with the replicas').
        self.primary_dir = None
        with contextlib.suppress(OSError):
            if not args.primaries_on_disk and shutil.disk_usage(
                    '/dev/shm').free >= 3 * meta['file_bytes'] + (1 << 30):
                path = '/dev/shm/zrsd-bench-%s-%d' % (self.stamp, os.getpid())
                os.makedirs(path)
                self.primary_dir = path
        self.catchup_timeout = max(300, meta['transactions'] / 20)
        self.owned = []             # every server started so far
        self.primaries = {}         # kind -> its primary
        self.kept = {}              # pair key -> stopped, caught-up replica
        self.workers = []           # (pipe, process) of each worker
        self.peer_python = None

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def blob_workload(self):
        """(path, metadata) of the blob workload, made on first use."""
        if self.blob_source is None:
            self.blob_source = workload(
                self.args.preset, self.args.seed, blobs=True)
        return self.blob_source

    def own(self, node):
        self.owned.append(node)
        return node

    def close(self):
        """Stop the workers and servers; move the primaries' logs and
        configs off tmpfs; unless --keep, remove the data files."""
        self.reset_workers(force=False)
        owned, self.owned = self.owned, []
        for node in reversed(owned):
            with contextlib.suppress(Exception):
                if node.running():
                    node.stop(60, None)
            with contextlib.suppress(Exception):
                node.close()
        if self.primary_dir and os.path.isdir(self.primary_dir):
            remove_data_files(self.primary_dir)
            shutil.copytree(self.primary_dir, self.dir, dirs_exist_ok=True)
            shutil.rmtree(self.primary_dir, ignore_errors=True)
        if not self.args.keep:
            remove_data_files(self.dir)

    def primary(self, kind):
        """The running primary of `kind` on a copy of its workload; a
        zrsd one logs precise times (the file copy is timed from them)."""
        primary = self.primaries.get(kind)
        if primary is None:
            directory = os.path.join(self.primary_dir or self.dir,
                                     kind.replace('zczrs', 'zc') + '-primary')
            primary = self.primaries[kind] = self.own(
                ZcZrsPrimary(directory) if kind == 'zczrs'
                else ZrsdNode(directory, 'primary', blobs=kind == ZRSD_BLOBS,
                              log_format=PRECISE_LOG_FORMAT))
            copy_storage(self.blob_workload()[0] if kind == ZRSD_BLOBS
                         else self.workload_path, primary)
        elif not primary.running():
            log('the %s primary had exited (status %s); restarting it' % (
                kind.replace('zczrs', 'zc.zrs'),
                primary.process.popen.returncode))
        if not primary.running():
            primary.start()
        return primary

    def new_replica(self, pair, directory):
        """An empty, unstarted replica of `pair` (zc.zrs: on the peer
        venv)."""
        port = self.primary(pair.primary).repl_port
        if pair.replica == 'zrsd':
            # No file copy: these replicas measure ZRS.
            return self.own(ZrsdNode(directory, 'replica', upstream=port,
                                     copy_file='off',
                                     log_format=PRECISE_LOG_FORMAT))
        if self.peer_python is None:
            started = time.monotonic()
            self.peer_python = peers.peer_python()
            log('peer venv (zc.zrs on ZODB 5.5.1) ready in %.0f s'
                % (time.monotonic() - started))
        replica = self.own(ZcZrsReplica(directory, port))
        replica.python = self.peer_python
        return replica

    def replica_for(self, pair):
        """(primary, its caught-up running replica) of `pair`, the replica
        kept from the catch-up if there is one."""
        primary = self.primary(pair.primary)
        replica = self.kept.get(pair.key)
        if replica is None:
            replica = self.kept[pair.key] = self.new_replica(
                pair, self.path('replica-' + pair.key))
        replica.start(120)
        target = served_tid(primary.zeo_port)
        if target is None:
            raise RuntimeError('the primary does not answer on its ZEO port '
                               '(see its log)')
        wait_served(replica, target, self.catchup_timeout)
        return primary, replica

    def plain_runzeo(self):
        """A running plain runzeo on a copy of the workload."""
        node = self.own(PlainZeoNode(self.path('runzeo'), 'plain'))
        copy_storage(self.workload_path, node)
        return node.start(120)

    def worker_conns(self):
        """The pipes to WORKERS worker processes, started on first use."""
        if not self.workers:
            context = multiprocessing.get_context('spawn')
            for i in range(WORKERS):
                conn, child = context.Pipe()
                process = context.Process(
                    target=worker_main, args=(child,), daemon=True,
                    name='bench-worker-%d' % i)
                process.start()
                self.workers.append((conn, process))
        return [conn for conn, _ in self.workers]

    def reset_workers(self, force=True):
        """Stop the workers (killed after 10 s, or at once with `force`: a
        failed exchange leaves the pipes out of step); next use starts new."""
        for conn, _ in self.workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        for _, process in self.workers:
            process.join(0 if force else 10)
            if process.is_alive():
                process.kill()
                process.join(5)
        self.workers = []
