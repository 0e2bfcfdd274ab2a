"""Reading a running server from outside: CPU time, memory, ZEO status, logs,
and the machine's own state (load, fsync latency).

Nothing here starts a process; `nodes.Run` does.
"""
import os
import sys
import time
import traceback

import ZEO
from ZODB.utils import p64, u64

from harness.process import ROOT
from harness.zrsd_nodes import process_memory

from .figures import percentile

MB = 1024.0 * 1024.0
BENCH_DIR = os.path.join(ROOT, 'var', 'bench')
CATCHUP_POLL = 0.02          # seconds between `ruok` polls of a replica
READ_CACHE_SIZE = 256 << 10  # ZEO client cache: small, loads reach the server


def log(message):
    """Progress on stderr (stdout gets the result tables)."""
    sys.stderr.write('[%s] %s\n' % (time.strftime('%H:%M:%S'), message))
    sys.stderr.flush()


def failed(what, exc):
    """Log a measurement that failed, with its traceback; the result that
    stands for it (a dict with an 'error')."""
    log('%s FAILED: %s' % (what, exc))
    traceback.print_exc(file=sys.stderr)
    return dict(error=str(exc))


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
    from zrsd.tools.check import StatusError, ask_status
    try:
        return ask_status('127.0.0.1:%d' % port, 'server', timeout)['1']
    except (StatusError, KeyError):
        return None


def served_tid(port):
    """The last transaction the ZEO server on `port` reports, or None."""
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


def check_alive(*processes):
    """A function raising if one of the `harness.process.Process`es exited."""
    def alive():
        for proc in processes:
            if proc.popen.poll() is not None:
                raise RuntimeError('%s exited with status %s; log %s' % (
                    os.path.basename(proc.args[0]), proc.popen.returncode,
                    proc.log_path))
    return alive


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
