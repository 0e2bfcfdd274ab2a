"""Failover without silent divergence: the history guard refuses a
secondary whose last tid is not in the primary's history (each side logs
one ERROR naming the tids; the secondary's file is unchanged); a clean
switchover under load; `zrsdctl promote`."""
import os
import shutil
import signal
from contextlib import closing

from harness.chaos import ChaosProxy
from harness.history import assert_same_history, transactions
from harness.process import run, stop_all, wait_until
from harness.zrsd_nodes import Writer, opened, primary_and_replica

REFUSED = 'refused: the primary closed'


def assert_refused(primary, secondary, secondary_tid, neighbours):
    """Both sides log the refusal once, the primary naming the secondary's
    tid and `neighbours` (its own transactions around it)."""
    wait_until(lambda: secondary.check_alive() and
               REFUSED + ' the link' in secondary.log(), 30,
               message='%s logs that it is refused' % secondary.name)
    (line,) = [line for line in primary.log().splitlines()
               if ' ERROR ' in line]
    assert '-> 127.0.0.1:' in line and 'secondary refused' in line, line
    assert 'its last transaction %s is not in this storage (%s)' % (
        secondary_tid.hex(), neighbours) in line, line
    (line,) = [line for line in secondary.log().splitlines()
               if REFUSED in line]
    assert ' ERROR ' in line and secondary_tid.hex() in line, line
    assert 'streaming transactions after %s' % secondary_tid.hex() \
        not in primary.log()


def test_replica_of_another_database_is_refused(node):
    a, replica, last = primary_and_replica(node, ('a', 'replica'))
    replica.stop()
    # Another database, created later: every tid is newer.
    b = node('b').start()
    b_first = b.commit('in-b')
    b_last = b.commit('in-b', 'y')
    history = transactions(replica.fs_path)
    replica.set_upstream(b.repl_port).start()
    b_root = transactions(b.fs_path)[0][0]   # the root's creation
    assert b_root < b_first
    assert_refused(b, replica, last, 'nothing before it, the one after it '
                   '%s' % b_root.hex())
    # It keeps trying (the primary may be fixed) and never applies.
    wait_until(lambda: replica.log().count(
        'the primary closed the link right after the handshake') >= 4,
        30, message='more refused attempts')
    assert replica.last_tid() == last
    stop_all(replica, b, a)
    assert transactions(replica.fs_path) == history
    assert b_last > last


def test_failover_fork_is_refused(node):
    """The old primary, back as the replica of a promoted replica that
    lacks its last two commits, is refused."""
    old, new, shared = primary_and_replica(node, ('old', 'new'))
    new.stop()
    old.commit('k', 2)
    lost = old.commit('k', 3)      # the replica never receives these
    new.set_upstream(None).start()      # now a primary
    forked = new.commit('k', 'after failover')
    old.stop()
    history = transactions(old.fs_path)
    old.set_upstream(new.repl_port).start()
    assert_refused(new, old, lost, 'the transaction before it is %s, the '
                   'one after it %s' % (shared.hex(), forked.hex()))
    assert old.last_tid() == lost
    stop_all(old, new)
    assert transactions(old.fs_path) == history


def test_primary_restored_from_older_backup(node, tmp_path):
    """A replica at tid 30 against a primary holding 10, 20 (the backup)
    and, after a commit, 40: refused before and after that commit."""
    primary = node('primary').start()
    primary.commit('n', 10)
    t20 = primary.commit('n', 20)
    replica = node('replica', upstream=primary.repl_port).start()
    primary.stop()
    backup = str(tmp_path / 'backup.fs')
    shutil.copyfile(primary.fs_path, backup)
    primary.start()
    t30 = primary.commit('n', 30)
    replica.wait_for_tid(t30)
    stop_all(replica, primary)
    shutil.copyfile(backup, primary.fs_path)
    os.remove(primary.fs_path + '.index')
    primary.start()
    history = transactions(replica.fs_path)
    replica.start()
    assert_refused(primary, replica, t30, 'the transaction before it is '
                   '%s, that is the last transaction here' % t20.hex())
    replica.stop()
    t40 = primary.commit('n', 40)
    assert t40 > t30
    replica.start()
    # Now 30 lies between 20 and 40: still not in the primary's history.
    wait_until(lambda: '(the transaction before it is %s, the one after '
               'it %s)' % (t20.hex(), t40.hex()) in primary.log(), 30,
               message='the refusal names 20 and 40')
    wait_until(lambda: REFUSED in replica.log(), 30,
               message='the replica logs that it is refused')
    assert replica.last_tid() == t30
    stop_all(replica, primary)
    assert transactions(replica.fs_path) == history


def test_switchover_under_load_loses_nothing(node):
    """A primary SIGTERMed under load waits until its lagging secondary
    (a throttled link) received everything, then exits."""
    primary = node('primary').start()
    primary.commit('seed')
    with closing(ChaosProxy(primary.repl_port, socket_buffer=32768)) as proxy:
        replica = node('replica', upstream=proxy.port).start()
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
    assert_same_history(primary.fs_path, replica.fs_path)


def promote(node):
    """`zrsdctl promote` of `node`; returns its output (status 0)."""
    return run('zrsdctl', '-C', node.config_path, 'promote').stdout


def read_key(db, key):
    with opened(db) as (tm, root):
        return root.get(key)


def test_promote_cascade_while_clients_read(node):
    """A promoted running cascade stops replicating for good, becomes
    writable (its read-only client keeps reading), its leaf keeps
    following, and stays primary after a restart on the same config."""
    primary = node('primary').start()
    primary.commit('k', 1)
    cascade = node('cascade', upstream=primary.repl_port,
                   serve=True).start()
    leaf = node('leaf', upstream=cascade.repl_port).start()
    seed = primary.commit('k', 2)
    leaf.wait_for_tid(seed)
    with closing(cascade.db(read_only=True)) as reader:
        assert read_key(reader, 'k') == 2
        output = promote(cascade)
        assert 'promoted to primary by zrsd (pid %d) at %s' % (
            cascade.pid, seed.hex()) in output, output
        log = cascade.log()
        assert 'promoted to primary at %s' % seed.hex() in log, log
        lost = primary.commit('k', 'never replicated')
        leaf.wait_for_tid(cascade.commit('k', 3))
        wait_until(lambda: read_key(reader, 'k') == 3, 60,
                   message='the read-only client reads the new primary')
    assert 'promoted already' in promote(cascade)
    cascade.stop()
    cascade.start()     # the same config, still with replicate-from
    log = cascade.log()
    assert 'promoted to primary on ' in log, log
    assert 'replicate-from 127.0.0.1:%d is ignored' % primary.repl_port \
        in log, log
    assert 'requesting transactions' not in log, log
    tid = cascade.commit('k', 4)
    leaf.wait_for_tid(tid)
    stop_all(leaf, cascade, primary)
    tids = [txn[0] for txn in transactions(cascade.fs_path)]
    assert lost not in tids and tid == tids[-1]
    assert_same_history(cascade.fs_path, leaf.fs_path)


def test_promote_stopped_replica(node):
    """Promotion recorded while zrsd is not running takes effect at its
    next start."""
    primary, replica, _ = primary_and_replica(node)
    replica.stop()
    output = promote(replica)
    assert 'zrsd is not running' in output, output
    replica.start()
    assert 'promoted to primary on ' in replica.log()
    tid = replica.commit('k', 'written to the promoted replica')
    assert replica.last_tid() == tid
    stop_all(replica, primary)


def stalled_secondary(node, zrs_lines=''):
    """A primary whose replica's link stalls after the first commit, and
    2 MB committed behind it: (primary, replica, proxy, last tid)."""
    primary = node('primary', zrs_lines=zrs_lines).start()
    first = primary.commit('k', 1)
    proxy = ChaosProxy(primary.repl_port, socket_buffer=16384)
    replica = node('replica', upstream=proxy.port).start()
    replica.wait_for_tid(first)
    proxy.stall()
    for i in range(20):
        last = primary.commit('big%d' % i, os.urandom(100000))
    return primary, replica, proxy, last


def test_switchover_bound_leaves_a_stalled_secondary_behind(node):
    """A stalled secondary is left behind at `shutdown-catch-up-timeout`,
    logged with its position."""
    primary, replica, proxy, last = stalled_secondary(
        node, '  shutdown-catch-up-timeout 1\n')
    with closing(proxy):
        primary.stop()
        log = primary.log()
        assert 'secondary left behind after 1s: last sent ' in log, log
        assert 'the last commit here is %s' % last.hex() in log, log
        assert 'every secondary received' not in log, log
        proxy.flow()
        assert replica.last_tid() < last
        replica.stop()


def test_second_sigterm_stops_at_once_during_the_catch_up(node):
    """A second SIGTERM while the primary waits for a secondary: exit 1."""
    primary, replica, proxy, last = stalled_secondary(node)
    with closing(proxy):
        primary.signal(signal.SIGTERM)
        primary.wait_for_log('letting 1 secondaries receive')
        primary.signal(signal.SIGTERM)
        assert primary.wait(30) == 1
        assert 'SIGTERM during shutdown, exiting at once' in primary.log()
