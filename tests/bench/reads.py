"""3. Reads: random ZEO loads per second from 1 and 4 client processes,
against the zrsd replica of (b) and against a plain runzeo on a copy of
the workload; and the server's CPU time per load it served."""
import random
import time

import ZEO
from ZODB.utils import p64

from .figures import fmt, fmt_range, ratio_rounds, summary
from .measure import READ_CACHE_SIZE, cpu_seconds, failed, log, server_status
from .nodes import READ_CLIENTS, ZRSD_TO_ZRSD
from .workers import Workers


def reader(conn, address, max_oid, seed, seconds):
    """In a worker: random loads (`load`, oids 1..max_oid) for `seconds`
    after 'go'; sends (loads, elapsed)."""
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


def reads(run, port, proc, clients, seconds, seed):
    """Random loads from `clients` worker processes for `seconds`;
    returns loads/s, server CPU µs per load and the server's own count
    of loads (ruok) for the window."""
    conns = run.workers_pool().conns[:clients]
    for i, conn in enumerate(conns):
        Workers.call(conn, reader, ('127.0.0.1', port), run.meta['max_oid'],
                     seed * 100 + i, seconds)
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


def run_reads(run, rounds, seconds, results):
    """Each round: 1 and 4 clients against both servers, the servers in
    alternating order; results['reads'][server][clients] per round."""
    out = results['reads'] = {'zrsd': {}, 'runzeo': {}}
    primary, replica = run.replica_for(ZRSD_TO_ZRSD)
    plain_port, plain_proc = run.plain_runzeo()
    servers = {'zrsd': (replica.zeo_port, replica.process),
               'runzeo': (plain_port, plain_proc)}
    for r in range(rounds):
        names = ['zrsd', 'runzeo'] if r % 2 == 0 else ['runzeo', 'zrsd']
        for clients in READ_CLIENTS:
            for name in names:
                port, proc = servers[name]
                try:
                    result = reads(run, port, proc, clients, seconds, r)
                except Exception as exc:
                    result = failed('reads %s %d clients' % (name, clients),
                                    exc)
                    run.reset_workers()
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


def summarise(reads, s, targets):
    """The read rows, the zrsd/runzeo ratios and the targets of `s`."""
    rows = {}
    for name, per_clients in reads.items():
        for clients, runs in per_clients.items():
            rows['%s/%s' % (name, clients)] = dict(
                loads_per_s=summary([r.get('loads_per_s') for r in runs]),
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
        plural = 's' if clients > 1 else ''
        targets.add('reads_ratio', 'reads/s zrsd / runzeo, %d client%s' % (
            clients, plural), rate and rate['median'], rate and rate['min'])
        targets.add('reads_cpu_ratio', 'server µs/load zrsd / runzeo, %d '
                    'client%s' % (clients, plural),
                    cpu and cpu['median'], cpu and cpu['max'])


def report(s, p):
    """The reads table (lines passed to `p`)."""
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
