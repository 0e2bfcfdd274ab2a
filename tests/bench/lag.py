"""2. Lag: a writer's `tpc_finish` returned -> the invalidation of that
commit reached a ZEO client of the replica (a worker process: the
CLOCK_MONOTONIC of every process is the same clock)."""
import math
import queue
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import ZEO
from ZODB.Connection import TransactionMetaData
from ZODB.utils import z64

from .measure import (
    attempt, fmt_range, loads_revision, log, median, percentiles, read_client,
    rotated, summaries, wait_served)
from .nodes import ZCZRS_TO_ZCZRS, ZCZRS_TO_ZRSD, ZRSD_TO_ZRSD, receive
from .stream import stream_probe
from .workload import record

NAME = 'lag'
TITLE = ('2. Lag: writer\'s tpc_finish returned -> the invalidation reached '
         'a ZEO client of the replica (ms)')
LAG_RATES = (100, 500)
LAG_OBJECTS = 16             # each writer cycles through this many objects
LAG_WRITER_RATE = 250        # commits/s per writer connection at most
LAG_LOADERS = 4              # loader threads of the lag reader
LAG_PAIRS = (ZRSD_TO_ZRSD, ZCZRS_TO_ZRSD, ZCZRS_TO_ZCZRS)
SUMMARISED = ('achieved_rate', 'p50', 'p90', 'p99', 'max', 'loaded_p50',
              'loaded_p99', 'loaded_max', 'commit_p50', 'commit_p99',
              'stream_p50', 'stream_p99', 'stream_max')


def lag_reader(conn, address, oids):
    """In a worker: per invalidation of a watched oid, a loader thread
    (several: loads overlap) loads it as of that tid (past the small
    cache): {tid: (time invalidated, time loaded, right revision)}, sent
    on ('stop', tid, timeout) once `tid` is in."""
    events = queue.SimpleQueue()
    storage = read_client(address)
    # Its "DB" queues each invalidation with the time it arrived.
    storage.registerDB(types.SimpleNamespace(
        invalidate=lambda tid, oids: events.put((time.monotonic(), tid, oids)),
        invalidateCache=lambda: None, transform_record_data=lambda d: d,
        untransform_record_data=lambda d: d))
    watched, results = set(oids), {}

    def loader():
        for t_invalidated, tid, changed in iter(events.get, None):
            for oid in watched.intersection(changed):
                right = loads_revision(storage, oid, tid)
                results[tid] = (t_invalidated, time.monotonic(), right)

    threads = [threading.Thread(target=loader, daemon=True)
               for _ in range(LAG_LOADERS)]
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


def writer_count(rate):
    """Writer connections for `rate` commits/s (a ZEO commit takes 1-3 ms)."""
    return max(1, math.ceil(rate / LAG_WRITER_RATE))


class LagWriter:
    """Commits one small object per transaction through its own ZEO client
    when told to (harness `Writer` has no schedule)."""

    def __init__(self, storage):
        self.storage, self.count, self.oids, self.serials = storage, 0, [], {}

    def transaction(self, oids, *meta):
        """New revisions of `oids`: (tid, time finished, duration)."""
        data = record({'n': self.count, 'payload': b'x' * 100})
        began = time.monotonic()
        t = TransactionMetaData(*meta)
        self.storage.tpc_begin(t)
        for oid in oids:
            self.storage.store(oid, self.serials.get(oid, z64), data, '', t)
        self.storage.tpc_vote(t)
        tid = self.storage.tpc_finish(t)
        finished = time.monotonic()
        self.serials.update(dict.fromkeys(oids, tid))
        return tid, finished, finished - began

    def setup(self):
        """Create the writer's objects; their tid."""
        self.oids = [self.storage.new_oid() for _ in range(LAG_OBJECTS)]
        return self.transaction(self.oids, 'bench', 'lag objects')[0]

    def commit(self):
        """Change the next of the writer's objects."""
        self.count += 1
        return self.transaction([self.oids[(self.count - 1) % LAG_OBJECTS]])


def run_writers(writers, rate, seconds):
    """Commit i due at start + i / rate on writer i % count (late: at
    once) for `seconds`: (commits by time, achieved rate, writers used)."""
    n = max(1, int(rate * seconds))
    count = min(len(writers), writer_count(rate))
    start = time.monotonic() + 0.02

    def work(k):
        done = []
        for i in range(k, n, count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            done.append(writers[k].commit())
        return done

    with ThreadPoolExecutor(count) as pool:     # raises a writer's error
        done = list(pool.map(work, range(count)))
    commits = sorted((c for per in done for c in per), key=lambda c: c[1])
    elapsed = commits[-1][1] - start
    return commits, (n / elapsed if n > 1 and elapsed > 0 else rate), count


def session(run, pair):
    """{rate: figures} of --lag-seconds of commits per rate on `pair`."""
    primary, replica = run.replica_for(pair)
    conn, probe = run.worker_conns()[:2]
    writers, streamed = [], {}
    try:
        for _ in range(max(writer_count(rate) for rate in LAG_RATES)):
            writers.append(LagWriter(ZEO.client(primary.zeo_address,
                                                wait_timeout=60)))
        setup_tid = max(writer.setup() for writer in writers)
        wait_served(replica, setup_tid, 60)
        conn.send((lag_reader, (replica.zeo_address, [
            oid for writer in writers for oid in writer.oids])))
        receive(conn)
        if run.args.lag_probe:
            probe.send((stream_probe, (primary.repl_port, setup_tid)))
            receive(probe)
        run_writers(writers, 100, 0.2)     # warm-up, not measured
        sessions = {}
        for rate in LAG_RATES:
            time.sleep(0.2)
            sessions[rate] = run_writers(writers, rate, run.args.lag_seconds)
        conn.send(('stop', max(c[0] for commits, _, _ in sessions.values()
                               for c in commits), 10.0))
        seen = receive(conn)
        if run.args.lag_probe:
            probe.send(('stop',))
            streamed = receive(probe)
    finally:
        for writer in writers:
            writer.storage.close()
    replica.stop()
    return {rate: figures(commits, achieved, count, seen, streamed)
            for rate, (commits, achieved, count) in sessions.items()}


def figures(commits, achieved, count, seen, streamed):
    """The figures of one rate (`seen`: the reader's, `streamed`: the
    probe's)."""
    good = [(tid, committed, duration, seen[tid])
            for tid, committed, duration in commits
            if tid in seen and seen[tid][2]]
    missing = sum(1 for c in commits if c[0] not in seen)
    notified = [(entry[0] - committed) * 1000
                for _, committed, _, entry in good]
    loaded = [(entry[1] - committed) * 1000 for _, committed, _, entry in good]
    samples = [[round(committed - commits[0][1], 4), round(n, 3),
                round(v, 3), round(duration * 1000, 3)] + ([
                    round((streamed[tid] - committed) * 1000, 3)
                    if tid in streamed else None] if streamed else [])
               for (tid, committed, duration, _), n, v in zip(
                   good, notified, loaded)]
    result = dict(
        commits=len(commits), achieved_rate=achieved, writers=count,
        missing=missing, stale=len(commits) - missing - len(good),
        over_15ms=sum(1 for v in notified if v > 15),
        first_commit_epoch=commits[0][1] + time.time() - time.monotonic(),
        samples=samples, **percentiles(notified),
        **percentiles(loaded, 'loaded_', (50, 99)),
        **percentiles([c[2] * 1000 for c in commits], 'commit_', (50, 99),
                      None))
    if streamed:
        result.update(percentiles([x[4] for x in samples if x[4] is not None],
                                  'stream_', (50, 99)))
        result['over_15ms_sent_late'] = sum(
            1 for x in samples
            if x[1] > 15 and x[4] is not None and x[4] > 15)
    return result


def run_phase(run):
    """{pair key: [a session per round]}, in an order rotated per round."""
    pairs = [pair for pair in LAG_PAIRS if not (
        pair is ZCZRS_TO_ZCZRS and run.args.no_reference_lag)]
    out = {pair.key: [] for pair in pairs}

    def forget(pair):
        """After a failed session: stop its replica and the workers."""
        if pair.key in run.kept:
            run.kept[pair.key].close()
        run.reset_workers()
    for r in range(run.args.rounds):
        for pair in rotated(pairs, r):
            rates = attempt('lag %s round %d' % (pair.key, r + 1), session,
                            run, pair, recover=lambda: forget(pair))
            out[pair.key].append(rates if 'error' in rates
                                 else dict(round=r + 1, rates=rates))
            for rate, res in rates.items() if 'error' not in rates else ():
                log('lag round %d %-24s %3d/s: p50 %.2f p99 %.2f max %.2f '
                    'ms, missing %d, stale %d' % (
                        r + 1, pair.label, rate, res['p50'] or -1,
                        res['p99'] or -1, res['max'] or -1, res['missing'],
                        res['stale']))
    return out


def summarise(lag, s, targets, meta):
    """The lag rows (per pair and rate), errors and targets of `s`."""
    rows = s['lag'] = {}
    for key, runs in lag.items():
        for rate in LAG_RATES:
            per = [run['rates'][rate] for run in runs
                   if rate in run.get('rates', ())]
            if not per:
                continue
            row = rows['%s@%d' % (key, rate)] = dict(
                rounds=len(per), writers=per[0].get('writers'),
                **{name: sum(p[name] for p in per) for name in (
                    'commits', 'missing', 'stale', 'over_15ms')},
                **summaries(per, SUMMARISED))
            if any('over_15ms_sent_late' in p for p in per):
                row['over_15ms_sent_late'] = sum(
                    p.get('over_15ms_sent_late', 0) for p in per)
    s['lag_errors'] = {key: [run['error'] for run in runs if 'error' in run]
                       for key, runs in lag.items()}
    for pair in (ZRSD_TO_ZRSD, ZCZRS_TO_ZRSD):
        row = rows.get('%s@500' % pair.key)
        for name in ('p99', 'max') if row else ():
            targets.add_stat('lag_500_%s_ms' % name, 'lag %s at 500/s, %s' % (
                name, pair.label), row[name], 'max')
    for key, row in rows.items():
        if row['missing'] or row['stale']:
            targets.add('lag_consistency', 'lag %s: missing/stale' % key,
                        row['missing'] + row['stale'])


def report(s, lag, p):
    """The lag table (lines passed to `p`)."""
    p('   %-24s %6s %8s %7s %-20s %-20s %-20s %-20s %5s %5s' % (
        'pair', 'rate', 'achieved', 'commits', 'p50', 'p90', 'p99',
        'max', 'miss', 'stale'))
    for pair in LAG_PAIRS:
        for error in s['lag_errors'].get(pair.key, []):
            p('   %-24s FAILED in a round: %s' % (
                pair.label, error.strip().splitlines()[-1]))
        for rate in LAG_RATES:
            row = s['lag'].get('%s@%d' % (pair.key, rate))
            if row is not None:
                p('   %-24s %6s %8.0f %7d %-20s %-20s %-20s %-20s %5d %5d' % (
                    (pair.label, '%d(%s)' % (rate, row['writers']),
                     row['achieved_rate']['median'], row['commits']) +
                    tuple(fmt_range(row[k]) for k in (
                        'p50', 'p90', 'p99', 'max')) +
                    (row['missing'], row['stale'])))

    def medians(prefix, condition, names=('p50', 'p99', 'max'), more=''):
        """'key A / B / C' (medians of prefix + name; then `more` % row)
        per row that has `condition`."""
        return ', '.join('%s %s%s' % (key, ' / '.join(
            median(row[prefix + name]) for name in names), more % row)
            for key, row in s['lag'].items() if row.get(condition))
    p('   then loaded at that tid (ms, p50 / p99 / max): %s'
      % medians('loaded_', 'loaded_p99'))
    if any(row.get('stream_p99') for row in s['lag'].values()):
        p('   --lag-probe: the primary sent the commit (ms, p50 / p99 / '
          'max), and of the commits over 15 ms, those the primary sent '
          'over 15 ms late: %s' % medians(
              'stream_', 'stream_p99',
              more=', %(over_15ms_sent_late)d of %(over_15ms)d'))
    p('   writer commit duration p50 / p99 (ms): %s'
      % medians('commit_', 'commit_p50', ('p50', 'p99')))
