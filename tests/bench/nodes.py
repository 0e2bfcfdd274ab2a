"""The servers of one benchmark run and their lifetimes.

`Run` owns the run directory, the two primaries (zc.zrs under runzeo, and
zrsd) on copies of the workload, the replicas kept from the catch-up for
the lag and read tests, a plain runzeo, and the worker processes.  Every
node is a harness class (`ZrsdNode`, `ZcZrsPrimary`, `ZcZrsSecondary`);
the benchmark only asks replicas to log sub-second time stamps, since
catch-up is timed from their log.
"""
import os
import shutil
import time

from harness import peers
from harness.process import BIN, Process, eventlog_section, free_port
from harness.zczrs import ZcZrsPrimary
from harness.zrsd_nodes import ZrsdNode

from .measure import BENCH_DIR, check_alive, log, served_tid, wait_served
from .workers import Workers

# ZConfig's asctime has whole seconds.
PRECISE_LOG_FORMAT = '%(created).6f %(levelname)s %(name)s %(message)s'

READ_CLIENTS = (1, 4)        # worker processes: the most any phase uses

RUNZEO_CONFIG = """\
<zeo>
  address 127.0.0.1:%(port)s
</zeo>
<filestorage 1>
  path %(fs_path)s
</filestorage>
""" + eventlog_section().replace('%', '%%')


class Pair:
    """A primary and a replica implementation ('zczrs' or 'zrsd'), measured
    together.  `key` names the pair in the results: the row letters of
    README's catch-up table."""

    def __init__(self, key, primary, replica, label):
        self.key = key
        self.primary = primary
        self.replica = replica
        self.label = label      # in the lag table


ZCZRS_TO_ZRSD = Pair('a', 'zczrs', 'zrsd', 'zc.zrs -> zrsd')
ZRSD_TO_ZRSD = Pair('b', 'zrsd', 'zrsd', 'zrsd -> zrsd')
ZCZRS_TO_ZCZRS = Pair('c', 'zczrs', 'zczrs', 'zc.zrs -> zc.zrs (ref)')


class PreciseZcZrsSecondary(peers.ZcZrsSecondary):
    """The zc.zrs secondary of harness.peers, logging `%(created).6f`."""

    log_format = PRECISE_LOG_FORMAT


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


class Run:
    """The servers of one run, in `directory` (default
    var/bench/run-TIMESTAMP/), on the workload at `workload_path`."""

    def __init__(self, args, workload_path, meta, directory=None):
        self.args = args
        self.workload_path = workload_path
        self.meta = meta
        self.last_tid = bytes.fromhex(meta['last_tid'])
        self.last_oid = bytes.fromhex(meta['last_oid'])
        self.stamp = time.strftime('%Y%m%d-%H%M%S')
        self.dir = directory or os.path.join(BENCH_DIR, 'run-' + self.stamp)
        os.makedirs(self.dir, exist_ok=directory is not None)
        self.primary_dir = primary_directory(args, meta, self.stamp)
        self.owned = []             # objects with .close(): all our servers
        self.zc_primary = None
        self.zrsd_primary = None
        self.kept = {}              # pair key -> stopped, caught-up replica
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

    def catchup_timeout(self):
        return max(300, self.meta['transactions'] / 20)

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

    def stop_primaries(self):
        for primary in (self.zc_primary, self.zrsd_primary):
            if primary is not None and primary.running():
                primary.stop()

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

    def primary(self, kind):
        """The running primary of `kind` ('zczrs' or 'zrsd') on a copy of
        the workload; started (again, if it had exited) when needed."""
        attribute = 'zc_primary' if kind == 'zczrs' else 'zrsd_primary'
        primary = getattr(self, attribute)
        if primary is not None and not primary.running():
            log('the %s primary had exited (status %s); restarting it' % (
                'zc.zrs' if kind == 'zczrs' else 'zrsd',
                primary.process.popen.returncode))
            primary.start()
        if primary is None:
            if kind == 'zczrs':
                primary = ZcZrsPrimary(self.primary_path('zc-primary'))
            else:
                primary = ZrsdNode(self.primary_path('zrsd-primary'),
                                   'primary')
            copy_storage(self.workload_path, primary.fs_path)
            self.own(primary).start()
            setattr(self, attribute, primary)
        return primary

    def python(self):
        """The peer venv's python (zc.zrs on ZODB 5.5.1), built if need be."""
        if self.peer_python is None:
            started = time.monotonic()
            self.peer_python = peers.peer_python()
            spent = time.monotonic() - started
            if spent > 2:
                log('peer venv (zc.zrs on ZODB 5.5.1) ready in %.0f s'
                    % spent)
        return self.peer_python

    # -- replicas ---------------------------------------------------------

    def new_replica(self, pair, directory):
        """An empty, unstarted replica of `pair` in `directory`."""
        primary = self.primary(pair.primary)
        if pair.replica == 'zczrs':
            self.python()
            return self.own(PreciseZcZrsSecondary(directory,
                                                  primary.repl_port))
        return self.own(ZrsdNode(directory, 'replica',
                                 upstream=primary.repl_port,
                                 log_format=PRECISE_LOG_FORMAT))

    def launch_replica(self, replica):
        """Start a replica without waiting for its data; returns the text of
        its log line saying it connected to its primary."""
        if isinstance(replica, ZrsdNode):
            replica.launch()
            return 'connected (zrs'
        replica.start(self.python())
        return ': Connected'

    def replica_for(self, pair):
        """A running replica of `pair`'s primary, caught up; the one kept
        from the catch-up phase if there is one."""
        primary = self.primary(pair.primary)
        replica = self.kept.get(pair.key)
        if replica is None:
            replica = self.kept[pair.key] = self.new_replica(
                pair, self.path('replica-' + pair.key))
        if isinstance(replica, ZrsdNode):
            replica.upstream = primary.repl_port
            replica.start(120)
        else:
            replica.primary_port = primary.repl_port
            replica.start(self.python())
        target = served_tid(primary.zeo_port)
        if target is None:
            raise RuntimeError('the primary does not answer on its ZEO port '
                               '(see its log)')
        wait_served(replica.zeo_port, target, check_alive(replica.process),
                    timeout=self.catchup_timeout())
        return primary, replica

    def plain_runzeo(self):
        """A plain runzeo on a copy of the workload: (port, Process)."""
        directory = self.path('runzeo')
        os.makedirs(directory, exist_ok=True)
        fs_path = os.path.join(directory, 'plain.fs')
        copy_storage(self.workload_path, fs_path)
        port = free_port()
        config = os.path.join(directory, 'runzeo.conf')
        with open(config, 'w') as f:
            f.write(RUNZEO_CONFIG % dict(port=port, fs_path=fs_path))
        proc = self.own(Process([os.path.join(BIN, 'runzeo'), '-C', config],
                                os.path.join(directory, 'runzeo.log')))
        proc.wait_for_log("listening on ('127.0.0.1', %d)" % port, 120)
        return port, proc

    # -- worker processes -------------------------------------------------

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
