"""Failover without silent divergence: the history guard.

A primary streams to a secondary only from zero or from a tid of its own
file (or of its packed part); anything else is a forked or foreign history
and the link is refused.  The three paths that forked silently before the
guard, each with real zrsd processes and real ZEO clients:

1. a replica pointed at the primary of another database;
2. a failover: the promoted replica never had the old primary's last
   commits, and the old primary comes back as its replica;
3. a primary restored from an older backup, with a replica ahead of it.

In each, the primary logs one ERROR naming the secondary's tid and its own
neighbouring tids, the secondary logs one ERROR saying it is refused, and
the secondary's file is unchanged: nothing is appended.

Then the rest of a failover: a clean switchover under load (SIGTERM: the
secondary receives everything; the bound; a second SIGTERM), and
`zrsdctl promote` of a running cascade and of a stopped replica.
(`zrsd-rewind` has tests/test_rewind.py; `make drill` runs it all.)
"""
import os
import shutil
import signal
import subprocess

import transaction

from harness import zczrs
from harness.chaos import ChaosProxy
from harness.history import assert_same_history, transactions
from harness.process import BIN, free_port, wait_until
from harness.zrsd_nodes import Writer, ZrsdNode


def commit(node, key, value='x'):
    """One small commit on a node's ZEO; returns its tid."""
    return zczrs.commit_change(node.zeo_address, key, value)


def make_primary(node):
    """Turn a stopped node's role into a primary (as an operator would by
    editing its config): no replicate-from, a replicate-to port."""
    node.upstream = None
    if node.repl_port is None:
        node.repl_port = free_port()


def assert_refused(primary, secondary, secondary_tid, neighbours):
    """Both sides say it, once each, and name what they know: the
    primary's line names the secondary's tid and `neighbours`, the text
    describing the primary's transactions around it."""
    wait_until(lambda: secondary.check_alive() and
               'refused: the primary closed the link' in secondary.log(),
               30, message='%s logs that it is refused' % secondary.name)
    primary_lines = [line for line in primary.log().splitlines()
                     if ' ERROR ' in line]
    assert len(primary_lines) == 1, primary.log()
    line = primary_lines[0]
    assert '-> 127.0.0.1:' in line and 'secondary refused' in line, line
    assert 'its last transaction %s is not in this storage (%s)' % (
        secondary_tid.hex(), neighbours) in line, line
    refused_lines = [line for line in secondary.log().splitlines()
                     if 'refused: the primary closed' in line]
    assert len(refused_lines) == 1, refused_lines
    assert ' ERROR ' in refused_lines[0], refused_lines[0]
    assert secondary_tid.hex() in refused_lines[0], refused_lines[0]
    assert 'streaming transactions after %s' % secondary_tid.hex() \
        not in primary.log()


def test_replica_of_another_database_is_refused(tmp_path, processes):
    a = ZrsdNode(tmp_path, 'a', register=processes).start()
    last = commit(a, 'in-a')
    replica = ZrsdNode(tmp_path, 'replica', upstream=a.repl_port,
                       register=processes).start()
    replica.wait_for_tid(last)
    replica.stop()
    # Another database, created later: every tid is newer than the
    # replica's.
    b = ZrsdNode(tmp_path, 'b', register=processes).start()
    b_first = commit(b, 'in-b')
    b_last = commit(b, 'in-b', 'y')
    history = transactions(replica.fs_path)
    replica.upstream = b.repl_port
    replica.start()
    b_root = transactions(b.fs_path)[0][0]   # the root's creation
    assert b_root < b_first
    assert_refused(b, replica, last, 'nothing before it, the one after it '
                   '%s' % b_root.hex())
    # It keeps trying (the primary may be fixed) and never applies.
    wait_until(lambda: replica.log().count(
        'the primary closed the link right after the handshake') >= 4,
        30, message='more refused attempts')
    assert replica.last_tid() == last
    replica.stop()
    b.stop()
    a.stop()
    assert transactions(replica.fs_path) == history
    assert b_last > last


def test_failover_fork_is_refused(tmp_path, processes):
    """The promoted replica never had the old primary's last two commits;
    the old primary, brought back as its replica, is refused."""
    old = ZrsdNode(tmp_path, 'old', register=processes).start()
    shared = commit(old, 'k', 1)
    new = ZrsdNode(tmp_path, 'new', upstream=old.repl_port,
                   register=processes).start()
    new.wait_for_tid(shared)
    new.stop()
    commit(old, 'k', 2)
    lost = commit(old, 'k', 3)      # the replica never receives these
    make_primary(new)
    new.start()
    forked = commit(new, 'k', 'after failover')
    old.stop()
    history = transactions(old.fs_path)
    old.upstream = new.repl_port
    old.repl_port = None
    old.start()
    assert_refused(new, old, lost, 'the transaction before it is %s, the '
                   'one after it %s' % (shared.hex(), forked.hex()))
    assert old.last_tid() == lost
    old.stop()
    new.stop()
    assert transactions(old.fs_path) == history


def test_primary_restored_from_older_backup(tmp_path, processes):
    """A replica at tid 30 against a primary holding 10, 20 (the backup)
    and, after a commit, 40: refused before and after that commit."""
    primary = ZrsdNode(tmp_path, 'primary', register=processes).start()
    commit(primary, 'n', 10)
    t20 = commit(primary, 'n', 20)
    replica = ZrsdNode(tmp_path, 'replica', upstream=primary.repl_port,
                       register=processes).start()
    primary.stop()
    backup = os.path.join(str(tmp_path), 'backup.fs')
    shutil.copyfile(primary.fs_path, backup)
    primary.start()
    t30 = commit(primary, 'n', 30)
    replica.wait_for_tid(t30)
    replica.stop()
    primary.stop()
    shutil.copyfile(backup, primary.fs_path)
    os.remove(primary.fs_path + '.index')
    primary.start()
    history = transactions(replica.fs_path)
    replica.start()
    # 30 is above the restored primary's last transaction.
    assert_refused(primary, replica, t30, 'the transaction before it is '
                   '%s, that is the last transaction here' % t20.hex())
    replica.stop()
    t40 = commit(primary, 'n', 40)
    assert t40 > t30
    replica.start()
    # Now 30 lies between 20 and 40: still not in the primary's history.
    wait_until(lambda: '(the transaction before it is %s, the one after '
               'it %s)' % (t20.hex(), t40.hex()) in primary.log(), 30,
               message='the refusal names 20 and 40')
    wait_until(lambda: 'refused: the primary closed' in replica.log(), 30,
               message='the replica logs that it is refused')
    assert replica.last_tid() == t30
    replica.stop()
    primary.stop()
    assert transactions(replica.fs_path) == history


def test_switchover_under_load_loses_nothing(tmp_path, processes):
    """SIGTERM a primary while a writer commits and its secondary lags
    behind a throttled link: the primary stops taking commits, lets the
    secondary receive everything, then exits; the secondary then holds the
    primary's last transaction."""
    primary = ZrsdNode(tmp_path, 'primary', register=processes).start()
    commit(primary, 'seed')
    proxy = ChaosProxy(primary.repl_port, socket_buffer=32768)
    try:
        replica = ZrsdNode(tmp_path, 'replica', upstream=proxy.port,
                           register=processes).start()
        proxy.throttle(400000)
        with Writer(primary, size=20000) as writer:
            # About 2 MB of commits: five seconds of link at that rate.
            wait_until(lambda: primary.check_alive()
                       and writer.commits >= 100, 60,
                       message='100 commits by the writer')
            assert replica.last_tid() < primary.last_tid()
            primary.stop()
        last = transactions(primary.fs_path)[-1][0]
        assert replica.last_tid() == last
        log = primary.log()
        assert 'every secondary received the last commit %s' % last.hex() \
            in log, log
        assert 'left behind' not in log, log
        replica.stop()
    finally:
        proxy.close()
    assert_same_history(primary.fs_path, replica.fs_path)


def zrsdctl(*args, timeout=120):
    """Run `zrsdctl ARGS`; returns the CompletedProcess (text)."""
    return subprocess.run([os.path.join(BIN, 'zrsdctl')] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def read_key(db, key):
    """root[key] through a fresh connection of a ZEO DB."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        return conn.root().get(key)
    finally:
        tm.abort()
        conn.close()


def test_promote_cascade_while_clients_read(tmp_path, processes):
    """`zrsdctl promote` on a running cascade: replication from the old
    primary stops for good, ZEO becomes writable (a read-only client is
    reconnected and keeps reading), its leaf keeps following; a restart
    with the unchanged config stays primary."""
    primary = ZrsdNode(tmp_path, 'primary', register=processes).start()
    commit(primary, 'k', 1)
    cascade = ZrsdNode(tmp_path, 'cascade', upstream=primary.repl_port,
                       serve=True, register=processes).start()
    leaf = ZrsdNode(tmp_path, 'leaf', upstream=cascade.repl_port,
                    register=processes).start()
    seed = commit(primary, 'k', 2)
    leaf.wait_for_tid(seed)
    reader = cascade.db(read_only=True)
    try:
        assert read_key(reader, 'k') == 2
        done = zrsdctl('-C', cascade.config_path, 'promote')
        assert done.returncode == 0, done.stdout
        assert 'promoted to primary by zrsd (pid %d) at %s' % (
            cascade.process.pid, seed.hex()) in done.stdout, done.stdout
        log = cascade.log()
        assert 'promoted to primary at %s' % seed.hex() in log, log
        lost = commit(primary, 'k', 'never replicated')
        tid = commit(cascade, 'k', 3)
        leaf.wait_for_tid(tid)
        wait_until(lambda: read_key(reader, 'k') == 3, 60,
                   message='the read-only client reads the new primary')
    finally:
        reader.close()
    again = zrsdctl('-C', cascade.config_path, 'promote')
    assert again.returncode == 0 and 'promoted already' in again.stdout
    cascade.stop()
    cascade.start()     # the same config, still with replicate-from
    log = cascade.log()
    assert 'promoted to primary on ' in log, log
    assert 'replicate-from 127.0.0.1:%d is ignored' % primary.repl_port \
        in log, log
    assert 'requesting transactions' not in log, log
    tid = commit(cascade, 'k', 4)
    leaf.wait_for_tid(tid)
    leaf.stop()
    cascade.stop()
    primary.stop()
    tids = [txn[0] for txn in transactions(cascade.fs_path)]
    assert lost not in tids and tid == tids[-1]
    assert_same_history(cascade.fs_path, leaf.fs_path)


def test_promote_stopped_replica(tmp_path, processes):
    """Promotion recorded while zrsd is not running takes effect at its
    next start."""
    primary = ZrsdNode(tmp_path, 'primary', register=processes).start()
    commit(primary, 'k', 1)
    replica = ZrsdNode(tmp_path, 'replica', upstream=primary.repl_port,
                       register=processes).start()
    replica.wait_for_tid(primary.last_tid())
    replica.stop()
    done = zrsdctl('-C', replica.config_path, 'promote')
    assert done.returncode == 0, done.stdout
    assert 'zrsd is not running' in done.stdout, done.stdout
    replica.start()
    assert 'promoted to primary on ' in replica.log()
    tid = commit(replica, 'k', 'written to the promoted replica')
    assert replica.last_tid() == tid
    replica.stop()
    primary.stop()


def stalled_secondary(tmp_path, processes, zrs_lines=''):
    """A primary whose replica's link stalls after the first commit, and
    2 MB committed behind it: (primary, replica, proxy, last tid)."""
    primary = ZrsdNode(tmp_path, 'primary', register=processes)
    primary.zrs_lines = zrs_lines
    primary.start()
    first = commit(primary, 'k', 1)
    proxy = ChaosProxy(primary.repl_port, socket_buffer=16384)
    replica = ZrsdNode(tmp_path, 'replica', upstream=proxy.port,
                       register=processes).start()
    replica.wait_for_tid(first)
    proxy.stall()
    for i in range(20):
        last = commit(primary, 'big%d' % i, os.urandom(100000))
    return primary, replica, proxy, last


def test_switchover_bound_leaves_a_stalled_secondary_behind(
        tmp_path, processes):
    """A secondary that cannot receive (a stalled link) is left behind at
    `shutdown-catch-up-timeout`, logged with its position."""
    primary, replica, proxy, last = stalled_secondary(
        tmp_path, processes, '  shutdown-catch-up-timeout 1\n')
    try:
        primary.stop()
        log = primary.log()
        assert 'secondary left behind after 1s: last sent ' in log, log
        assert 'the last commit here is %s' % last.hex() in log, log
        assert 'every secondary received' not in log, log
        proxy.flow()
        assert replica.last_tid() < last
        replica.stop()
    finally:
        proxy.close()


def test_second_sigterm_stops_at_once_during_the_catch_up(tmp_path,
                                                          processes):
    primary, replica, proxy, last = stalled_secondary(tmp_path, processes)
    try:
        primary.process.signal(signal.SIGTERM)
        primary.process.wait_for_log('letting 1 secondaries receive')
        primary.process.signal(signal.SIGTERM)
        assert primary.process.popen.wait(30) == 1
        assert 'SIGTERM during shutdown, exiting at once' in primary.log()
    finally:
        proxy.close()
