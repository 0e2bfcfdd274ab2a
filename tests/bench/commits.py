"""4. What replication costs the primary: ZEO commits per second of 1 and
4 writer processes against a plain runzeo, and against a zrsd primary
with 0, 1 and 3 caught-up zrsd replicas, each on a new, empty file; and
the server's CPU time per commit.

The replicas run under the idle scheduling class (`chrt --idle 0`; nice 19
where that is refused): on one machine they would otherwise take the
cores of the primary and its writers, which on a real deployment they do
not (each replica has its host).  They get whatever CPU time the primary
and the writers leave; so that a reader can see that they kept up, each
measurement ends with how long the replicas took to serve the primary's
last commit after the writers stopped ("behind").  What a secondary costs
the primary itself (reading, framing, sending, the GIL) is measured all
the same, in its commits/s and its CPU time per commit.
"""
import functools
import os
import subprocess
import time

import ZEO
from ZODB.Connection import TransactionMetaData
from ZODB.utils import z64

from harness.zrsd_nodes import PlainZeoNode, ZrsdNode

from .measure import (
    attempt, fmt_range, log, ratio_summary, rotated, summaries, wait_served)
from .nodes import run_workers, timed
from .workload import record

NAME = 'commits'
TITLE = '4. Commits: ZEO commits/s of small transactions, by writers'
WRITERS = (1, 4)                 # writer processes (at most nodes.WORKERS)
SERVERS = {'runzeo': 'plain runzeo', 'zrsd-0': 'zrsd, no secondary',
           'zrsd-1': 'zrsd, 1 secondary', 'zrsd-3': 'zrsd, 3 secondaries'}


def writer(conn, address, seconds):
    """In a worker: one small object changed per transaction, as fast as
    the server answers (see nodes.timed)."""
    storage = ZEO.client(address, wait_timeout=60)
    oid, serial = storage.new_oid(), z64
    data = record({'payload': b'x' * 100})

    def commit():
        nonlocal serial
        t = TransactionMetaData()
        storage.tpc_begin(t)
        storage.store(oid, serial, data, '', t)
        storage.tpc_vote(t)
        serial = storage.tpc_finish(t)

    commit()
    timed(conn, commit, seconds)
    storage.close()


@functools.cache
def idle_prefix():
    """The command prefix that runs a process in the idle class."""
    try:
        subprocess.run(['chrt', '--idle', '0', 'true'], check=True,
                       capture_output=True)
        return ['chrt', '--idle', '0']
    except (OSError, subprocess.CalledProcessError):
        return ['nice', '-n', '19']


class IdleReplica(ZrsdNode):
    """A zrsd replica in the idle scheduling class (see the module's
    text)."""

    def command(self):
        return idle_prefix() + super().command()


def server(run, name, directory, replicas_directory):
    """A running server `name` of SERVERS on a new file in `directory`,
    with its caught-up replicas in `replicas_directory`: (server, nodes to
    stop)."""
    if name == 'runzeo':
        node = run.own(PlainZeoNode(directory, 'plain'))
        node.read_only = False
        return node.start(120), [node]
    node = run.own(ZrsdNode(directory, 'primary')).start(120)
    replicas = [run.own(IdleReplica(replicas_directory, 'replica-%d' % i,
                                    upstream=node.repl_port))
                for i in range(int(name.split('-')[1]))]
    if replicas:
        tid = node.commit('replicated')
        for replica in replicas:
            wait_served(replica.launch(), tid, 120)
    return node, [node] + replicas


def commits(run, node, replicas, writers, seconds):
    """Commits/s of `writers` worker processes on `node` for `seconds`,
    the server's CPU µs per commit, and how many seconds after the
    writers stopped the last of `replicas` served the last commit."""
    count, per_s, cpu, _ = run_workers(
        run, node, writer, [(node.zeo_address, seconds)] * writers)
    stopped = time.monotonic()
    result = dict(commits=count, commits_per_s=per_s,
                  cpu_us_per_commit=cpu / count * 1e6 if count else None)
    if replicas:
        last = node.last_tid()
        result['behind_s'] = max(wait_served(replica, last, 120)
                                 for replica in replicas) - stopped
    return result


def run_phase(run):
    """Each round: every server of SERVERS in turn (rotated), new on an
    empty file, with 1 and 4 writers: {server: {writers: [per round]}}."""
    out = {name: {} for name in SERVERS}
    top = os.path.join(run.primary_dir or run.dir, 'commits')
    for r in range(run.args.rounds):
        for name in rotated(SERVERS, r):
            each = '%s-%d' % (name, r + 1)
            started = attempt('commits: start %s' % name, server, run, name,
                              os.path.join(top, each),
                              run.path('commit-replicas', each))
            if isinstance(started, dict):      # failed, logged
                continue
            node, nodes = started
            try:
                for writers in WRITERS:
                    result = attempt(
                        'commits %s %d writers' % (name, writers), commits,
                        run, node, nodes[1:], writers,
                        run.args.read_seconds, recover=run.reset_workers)
                    result['round'] = r + 1
                    out[name].setdefault(str(writers), []).append(result)
                    if 'commits_per_s' in result:
                        log('commits round %d %-7s %d writer(s): %6.0f/s, '
                            '%.0f µs server CPU/commit, replicas behind '
                            '%s s' % (
                                r + 1, name, writers,
                                result['commits_per_s'],
                                result['cpu_us_per_commit'],
                                '%.2f' % result['behind_s']
                                if 'behind_s' in result else '-'))
            finally:
                for each in reversed(nodes):
                    each.stop(60, None)
    return out


def summarise(commits, s, targets, meta):
    """The commit rows, the zrsd/runzeo ratios and the targets of `s`."""
    s['commits'] = {
        '%s/%s' % (name, writers): summaries(
            runs, ('commits_per_s', 'cpu_us_per_commit', 'behind_s'))
        for name, per_writers in commits.items()
        for writers, runs in per_writers.items()}
    ratios = s['commits_ratios'] = {}
    for name in list(SERVERS)[1:]:      # zrsd-N, against runzeo
        secondaries = int(name.split('-')[1])
        for writers in WRITERS:
            ratio = ratios['%s/%d' % (name, writers)] = ratio_summary(
                commits[name].get(str(writers), []),
                commits['runzeo'].get(str(writers), []), 'commits_per_s')
            if secondaries:     # the targets commits_1_ratio, _3_ratio
                targets.add_stat(
                    'commits_%d_ratio' % secondaries,
                    'commits/s zrsd with %d secondar%s / runzeo, %d writer%s'
                    % (secondaries, 'ies' if secondaries > 1 else 'y',
                       writers, 's' if writers > 1 else ''), ratio, 'min')


def report(s, commits, p):
    """The commits table (lines passed to `p`)."""
    p('   %-22s %7s %-24s %-22s %-22s %s' % (
        'server', 'writers', 'commits/s', 'server CPU µs/commit',
        'ratio to runzeo', 'replicas behind, s'))
    for writers in WRITERS:
        for name, label in SERVERS.items():
            row = s['commits'].get('%s/%d' % (name, writers))
            if row and row['commits_per_s']:
                p('   %-22s %7d %-24s %-22s %-22s %s' % (
                    label, writers, fmt_range(row['commits_per_s'], 0),
                    fmt_range(row['cpu_us_per_commit'], 0),
                    fmt_range(s['commits_ratios'].get(
                        '%s/%d' % (name, writers)), 3)
                    if name != 'runzeo' else '',
                    fmt_range(row.get('behind_s'), 2)
                    if row.get('behind_s') else ''))
