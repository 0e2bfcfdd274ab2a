"""What the phases share: logging, readings of a server and of the
machine, and the figures (percentiles, medians, ratios, targets)."""
import math
import operator
import os
import statistics
import sys
import time
import traceback

import ZEO
from ZODB.utils import p64, u64

from harness.process import ROOT, wait_until
from zrsd.tools.check import StatusError, ask_status

MB = 1024.0 * 1024.0
BENCH_DIR = os.path.join(ROOT, 'var', 'bench')
READ_CACHE_SIZE = 256 << 10  # ZEO client cache: small, loads reach the server
# The ratio targets (`_over_`, `_ratio`) are printed with three decimals.
TARGETS = dict(
    catchup_a_over_e='>= 0.9', catchup_b_over_c='>= 3',
    catchup_f_over_c='>= 5', catchup_g_over_c='>= 5',
    catchup_f_mb_s='>= 150', catchup_g_mb_s='>= 150',
    catchup_h_mb_s='>= 150', lag_500_p99_ms='<= 2', lag_500_max_ms='<= 15',
    lag_consistency='== 0', reads_ratio='>= 0.95',
    reads_cpu_ratio='<= 1.05', commits_1_ratio='>= 0.95',
    commits_3_ratio='>= 0.9', memory_mb='<= 150')
COMPARE = {'>=': operator.ge, '<=': operator.le, '==': operator.eq}


def log(message):
    """Progress on stderr (stdout gets the result tables)."""
    print('[%s] %s' % (time.strftime('%H:%M:%S'), message), file=sys.stderr,
          flush=True)


def attempt(what, function, *args, recover=None):
    """`function(*args)`, or once it raised (logged), `recover()` and
    {'error': ...}: a failed measurement does not end the run."""
    try:
        return function(*args)
    except Exception as exc:
        log('%s FAILED: %s' % (what, exc))
        traceback.print_exc(file=sys.stderr)
        if recover is not None:
            recover()
        return dict(error=str(exc))


def rotated(items, r):
    """`items` in the order of round `r` (no kind always measured first)."""
    items = list(items)
    return items[r % len(items):] + items[:r % len(items)]


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), seconds; None if gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def read_client(address):
    """A read-only ZEO client with the small cache (READ_CACHE_SIZE)."""
    return ZEO.client(address, read_only=True, cache_size=READ_CACHE_SIZE,
                      wait_timeout=60)


def loads_revision(storage, oid, tid):
    """Whether `storage` loads the revision of `oid` that `tid` wrote."""
    loaded = storage.loadBefore(oid, p64(u64(tid) + 1))
    return loaded is not None and loaded[1] == tid


def server_status(port):
    """The `ruok` status of storage '1' on `port`, or None (no answer)."""
    try:
        return ask_status('127.0.0.1:%d' % port, 'server', 5.0)['1']
    except (StatusError, KeyError):
        return None


def served_tid(port):
    status = server_status(port)
    return status and bytes.fromhex(status['last-transaction'])


def poll(node, predicate, timeout, what, interval):
    """Poll `predicate()` until true; fails if `node`'s process exits."""
    wait_until(lambda: node.check_alive() and predicate(), timeout,
               interval, '%s: %s' % (node.name, what))


def wait_served(node, tid, timeout):
    """time.monotonic() once `node` serves `tid` (ruok); see `poll`."""
    poll(node, lambda: served_tid(node.zeo_port) == tid, timeout,
         'tid %s served on port %d' % (tid.hex(), node.zeo_port), 0.02)
    return time.monotonic()


def machine_load():
    """(1-minute load average, CPU pressure: % of the last 60 s in which
    some task waited for a CPU, from /proc/pressure/cpu, or None)."""
    try:
        with open('/proc/pressure/cpu') as f:
            line = next(line for line in f if line.startswith('some'))
        pressure = float(line.split('avg60=')[1].split()[0])
    except (OSError, IndexError, ValueError, StopIteration):
        pressure = None
    return os.getloadavg()[0], pressure


def fsync_probe(directory, count=200, interval=0.01):
    """fsync latency (ms) of the disk under `directory`: `count` fsynced
    appends of 200 bytes, `interval` apart (a replica's per transaction)."""
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
    return percentiles(latencies)


def percentiles(values, prefix='', ps=(50, 90, 99), top='max'):
    """{prefix + 'pN': the nearest-rank percentile N, prefix + top: the
    largest (no `top`: none)} of `values` (None if there are none)."""
    values = sorted(values) or [None]
    out = {'%sp%d' % (prefix, p):
           values[max(1, math.ceil(p / 100.0 * len(values))) - 1] for p in ps}
    if top:
        out[prefix + top] = values[-1]
    return out


def summary(values):
    """median, min, max (and the values) of the non-None `values`."""
    values = [v for v in values if v is not None]
    if values:
        return dict(median=statistics.median(values), min=min(values),
                    max=max(values), values=values)


def summaries(runs, names):
    return {name: summary([run.get(name) for run in runs]) for name in names}


def ratio_summary(xs, ys, key):
    """summary() of x[key] / y[key] in each round that has both."""
    return summary([x[key] / y[key] for x, y in zip(xs, ys)
                    if x.get(key) and y.get(key)])


class Targets(list):
    """The target lines of a summary, in the order they are added."""

    def add(self, name, label, value, worst=None):
        """Target `name` of TARGETS on `value` (the median over the
        rounds), `worst` the worst round's; met is None without a value."""
        op, limit = TARGETS[name].split()
        met = None if value is None else COMPARE[op](value, float(limit))
        self.append(dict(name=name, label=label, value=value, worst=worst,
                         target=TARGETS[name], met=met))

    def add_stat(self, name, label, stat, worst):
        """A target on a `summary()`; `worst` is 'min' or 'max'."""
        self.add(name, label, stat and stat['median'], stat and stat[worst])


def fmt(value, digits=2):
    return '-' if value is None else '%.*f' % (digits, value)


def median(stat, digits=2):
    return fmt(stat and stat['median'], digits)


def fmt_range(stat, digits=2):
    """'median (min-max)' of a `summary()`, or '-'."""
    return '%s (%s-%s)' % tuple(fmt(stat[k], digits) for k in (
        'median', 'min', 'max')) if stat else '-'
