"""3. Reads: random ZEO loads per second from 1 and 4 client processes on
the zrsd replica of (b) and on a plain runzeo; server CPU per load."""
import itertools
import random

from ZODB.utils import p64

from .measure import (
    READ_CACHE_SIZE, attempt, fmt, fmt_range, log, ratio_summary, read_client,
    rotated, server_status, summaries, summary)
from .nodes import ZRSD_TO_ZRSD, run_workers, timed

NAME = 'reads'
TITLE = '3. Reads: random ZEO loads, client cache %d KB' % (
    READ_CACHE_SIZE >> 10)
SERVERS = {'zrsd': 'zrsd replica', 'runzeo': 'plain runzeo'}
READ_CLIENTS = (1, 4)        # client processes (at most nodes.WORKERS)


def reader(conn, address, max_oid, seed, seconds):
    """In a worker: random loads, 64 between looks at the clock (see
    nodes.timed)."""
    storage = read_client(address)
    rng = random.Random(seed)
    oids = [p64(rng.randint(1, max_oid)) for _ in range(1 << 16)]
    for oid in oids[:200]:
        storage.load(oid)
    batches = itertools.cycle([oids[i:i + 64] for i in range(0, 1 << 16, 64)])

    def load_batch():
        for oid in next(batches):
            storage.load(oid)
    timed(conn, load_batch, seconds, 64)
    storage.close()


def reads(run, node, clients, seconds, seed):
    """Loads/s of `clients` readers on `node`, server CPU µs per load and
    the server's count of loads (ruok)."""
    loads, per_s, cpu, served = run_workers(
        run, node, reader, [(node.zeo_address, run.meta['max_oid'],
                             seed * 100 + i, seconds) for i in range(clients)],
        lambda: server_status(node.zeo_port)['loads'])
    return dict(loads=loads, loads_per_s=per_s, server_loads=served,
                cpu_seconds=cpu,
                cpu_us_per_load=cpu / served * 1e6 if served else None)


def run_phase(run):
    """{server: {clients: [one result per round]}}."""
    out = {name: {} for name in SERVERS}
    servers = dict(zrsd=run.replica_for(ZRSD_TO_ZRSD)[1],
                   runzeo=run.plain_runzeo())
    for r in range(run.args.rounds):
        for clients in READ_CLIENTS:
            for name in rotated(SERVERS, r):
                result = attempt(
                    'reads %s %d clients' % (name, clients), reads, run,
                    servers[name], clients, run.args.read_seconds, r,
                    recover=run.reset_workers)
                result['round'] = r + 1
                out[name].setdefault(str(clients), []).append(result)
                if 'loads_per_s' in result:
                    log('reads round %d %-6s %d client(s): %8.0f loads/s, '
                        '%.1f µs CPU/load (%d of %d loads reached the '
                        'server)' % (
                            r + 1, name, clients, result['loads_per_s'],
                            result['cpu_us_per_load'],
                            result['server_loads'], result['loads']))
    servers['runzeo'].stop(expect=None)
    servers['zrsd'].stop()
    return out


def summarise(reads, s, targets, meta):
    """The read rows, the zrsd/runzeo ratios and the targets of `s`."""
    s['reads'] = {
        '%s/%s' % (name, clients): dict(
            server_fraction=summary([r['server_loads'] / r['loads']
                                     for r in runs if r.get('loads')]),
            **summaries(runs, ('loads_per_s', 'cpu_us_per_load')))
        for name, per_clients in reads.items()
        for clients, runs in per_clients.items()}
    ratios = s['reads_ratios'] = {}
    for clients in READ_CLIENTS:
        zrsd, runzeo = (reads[name].get(str(clients), []) for name in SERVERS)
        ratio = ratios[str(clients)] = {
            key: ratio_summary(zrsd, runzeo, key)
            for key in ('loads_per_s', 'cpu_us_per_load')}
        clients = '%d client%s' % (clients, 's' * (clients > 1))
        targets.add_stat('reads_ratio', 'reads/s zrsd / runzeo, ' + clients,
                         ratio['loads_per_s'], 'min')
        targets.add_stat('reads_cpu_ratio', 'server µs/load zrsd / runzeo, '
                         + clients, ratio['cpu_us_per_load'], 'max')


def report(s, reads, p):
    """The reads table (lines passed to `p`)."""
    p('   %-14s %7s %-28s %-22s %s' % (
        'server', 'clients', 'loads/s', 'server CPU µs/load',
        'reached server'))
    for clients in READ_CLIENTS:
        for name, label in SERVERS.items():
            row = s['reads'].get('%s/%d' % (name, clients))
            if row and row['loads_per_s']:
                p('   %-14s %7d %-28s %-22s %s' % (
                    label, clients, fmt_range(row['loads_per_s'], 0),
                    fmt_range(row['cpu_us_per_load'], 1),
                    fmt(row['server_fraction'] and
                        row['server_fraction']['median'] * 100, 1) + ' %'))
        ratio = s['reads_ratios'].get(str(clients), {})
        p('   ratio zrsd/runzeo, %d client(s): loads/s %s, µs/load %s' % (
            clients, fmt_range(ratio.get('loads_per_s')),
            fmt_range(ratio.get('cpu_us_per_load'))))
