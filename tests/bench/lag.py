"""2. Lag: a writer's `tpc_finish` returned -> the invalidation of that
commit reached a ZEO client of the replica.

Writer threads in this process commit to the primary on a schedule (100/s,
then 500/s); a worker process (`lag_reader`) holds a ZEO client of the
replica, time-stamps each invalidation as it arrives and loads the object
as of that tid.  `CLOCK_MONOTONIC` is the same clock in every process.
"""
import math
import pickle
import queue
import threading
import time
import traceback

import ZEO
from ZODB.Connection import TransactionMetaData
from ZODB.utils import p64, u64, z64

from .figures import fmt, fmt_range, percentile, summary
from .measure import READ_CACHE_SIZE, check_alive, failed, log, wait_served
from .nodes import ZCZRS_TO_ZCZRS, ZCZRS_TO_ZRSD, ZRSD_TO_ZRSD
from .stream import stream_probe
from .workers import Workers
from .workload import record_meta

LAG_RATES = (100, 500)
LAG_OBJECTS = 16             # each writer cycles through this many objects
LAG_WRITER_RATE = 250        # commits/s per writer connection at most
LAG_LOADERS = 4              # loader threads of the lag reader
LAG_PAIRS = (ZRSD_TO_ZRSD, ZCZRS_TO_ZRSD, ZCZRS_TO_ZCZRS)


# -- the reader (in a worker process) --------------------------------------

class InvalidationRecorder:
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


def lag_reader(conn, address, oids):
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
    storage.registerDB(InvalidationRecorder(events))
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


# -- the writers -----------------------------------------------------------

def writer_count(rate):
    """Writer connections for `rate` commits/s: one ZEO commit takes 1-3 ms
    here (two round trips and the primary's fsync), so one synchronous
    writer cannot commit 500 times a second; each does at most
    LAG_WRITER_RATE."""
    return max(1, math.ceil(rate / LAG_WRITER_RATE))


class LagWriter:
    """Commits one small object per transaction through its own ZEO client,
    with the storage API, when told to and timing each commit.

    (zrsd_nodes.Writer commits through a ZODB connection as fast as it can
    in a thread of its own; the lag needs commits on a schedule, each with
    the time its `tpc_finish` returned.)
    """

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


# -- a session -------------------------------------------------------------

def lag(run, pair, rates, seconds):
    """A lag session on `pair`: for each rate, `seconds` of commits;
    returns {rate: figures}."""
    primary, replica = run.replica_for(pair)
    conn = run.workers_pool().conns[0]
    writers = []
    try:
        for _ in range(max(writer_count(rate) for rate in rates)):
            writers.append(LagWriter(ZEO.client(primary.zeo_address,
                                                wait_timeout=60)))
        setup_tid = max(writer.setup() for writer in writers)
        wait_served(replica.zeo_port, setup_tid,
                    check_alive(replica.process), timeout=60)
        Workers.call(conn, lag_reader, ('127.0.0.1', replica.zeo_port),
                     [oid for writer in writers for oid in writer.oids])
        Workers.receive(conn)
        probe = None
        if run.args.lag_probe:
            probe = run.workers_pool().conns[1]
            Workers.call(probe, stream_probe, primary.repl_port, setup_tid)
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
    return {rate: figures(commits, achieved, count, seen, streamed)
            for rate, (commits, achieved, count) in sessions.items()}


def figures(commits, achieved, count, seen, streamed):
    """The figures of one rate of a session: `commits` as run_writers
    returned them, `seen` the reader's results, `streamed` the probe's."""
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
    return dict(
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
        first_commit_epoch=commits[0][1] + time.time() - time.monotonic(),
        samples=samples, **probe)


def run_lag(run, rounds, seconds, results, pairs):
    """A session per pair in each round, in an order rotated per round;
    results['lag'][key] gets one dict per round."""
    out = results['lag'] = {pair.key: [] for pair in pairs}
    for r in range(rounds):
        for pair in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
            try:
                result = lag(run, pair, LAG_RATES, seconds)
            except Exception as exc:
                result = failed('lag %s round %d' % (pair.key, r + 1), exc)
                replica = run.kept.get(pair.key)
                if replica is not None and replica.process is not None:
                    replica.process.close()
                run.reset_workers()
            out[pair.key].append(dict(round=r + 1, rates=result)
                                 if 'error' not in result else result)
            for rate, res in result.items():
                if isinstance(res, dict):
                    log('lag round %d %-24s %3d/s: p50 %.2f p99 %.2f max '
                        '%.2f ms, missing %d, stale %d' % (
                            r + 1, pair.label, rate, res['p50'] or -1,
                            res['p99'] or -1, res['max'] or -1,
                            res['missing'], res['stale']))


# -- summary and table -----------------------------------------------------

def summarise(lag, s, targets):
    """The lag rows (per pair and rate), errors and targets of `s`."""
    rows = {}
    for key, runs in lag.items():
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
            for name in ('achieved_rate', 'p50', 'p90', 'p99', 'max',
                         'loaded_p50', 'loaded_p99', 'loaded_max',
                         'commit_p50', 'commit_p99', 'stream_p50',
                         'stream_p99', 'stream_max'):
                row[name] = summary([p.get(name) for p in per])
            if any('over_15ms_sent_late' in p for p in per):
                row['over_15ms_sent_late'] = sum(
                    p.get('over_15ms_sent_late', 0) for p in per)
            rows['%s@%d' % (key, rate)] = row
    s['lag'] = rows
    s['lag_errors'] = {key: [run['error'] for run in runs if 'error' in run]
                       for key, runs in lag.items()}
    for pair in (ZRSD_TO_ZRSD, ZCZRS_TO_ZRSD):
        row = rows.get('%s@500' % pair.key)
        if row is None:
            continue
        targets.add('lag_500_p99_ms', 'lag p99 at 500/s, %s' % pair.label,
                    row['p99']['median'], row['p99']['max'])
        targets.add('lag_500_max_ms', 'lag max at 500/s, %s' % pair.label,
                    row['max']['median'], row['max']['max'])
    for key, row in rows.items():
        if row['missing'] or row['stale']:
            targets.failed('lag_consistency', 'lag %s: missing/stale' % key,
                           row['missing'] + row['stale'], '== 0')


def report(s, p):
    """The lag table (lines passed to `p`)."""
    p('')
    p('2. Lag: writer\'s tpc_finish returned -> the invalidation reached '
      'a ZEO client of the replica (ms)')
    p('   %-24s %6s %8s %7s %-20s %-20s %-20s %-20s %5s %5s' % (
        'pair', 'rate', 'achieved', 'commits', 'p50', 'p90', 'p99',
        'max', 'miss', 'stale'))
    for pair in LAG_PAIRS:
        for error in s['lag_errors'].get(pair.key, []):
            p('   %-24s FAILED in a round: %s' % (
                pair.label, error.strip().splitlines()[-1]))
        for rate in LAG_RATES:
            row = s['lag'].get('%s@%d' % (pair.key, rate))
            if row is None:
                continue
            p('   %-24s %6s %8.0f %7d %-20s %-20s %-20s %-20s %5d %5d' % (
                pair.label, '%d(%s)' % (rate, row['writers']),
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
