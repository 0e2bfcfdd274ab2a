"""Packing replicas with `zeopack`, as operators of zc.zrs secondaries do.

Real processes: a zrsd primary, a cascade replica that replicates from it
and serves a leaf replica, ZEO clients, ZEO's own `zeopack` script (which
connects read-only).  A pack on a replica packs its own file (history
retention) while replication goes on; it is never replicated, the current
state stays the primary's, and `zrsd-verify` agrees.  `pack refuse` keeps
a replica's file untouched.
"""
import os
import re
import subprocess

from harness import zczrs
from harness.history import transactions
from harness.process import BIN, wait_until
from harness.zrsd_nodes import Writer, ZrsdNode


def zeopack(node):
    """Run ZEO's `zeopack` against the node's ZEO port; (status, output)."""
    done = subprocess.run(
        [os.path.join(BIN, 'zeopack'), '127.0.0.1:%d' % node.zeo_port],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    return done.returncode, done.stdout.decode('utf-8', 'replace')


def verify(primary, replica):
    """zrsd-verify between two nodes' ZEO ports; (status, output)."""
    done = subprocess.run(
        [os.path.join(BIN, 'zrsd-verify'), '127.0.0.1:%d' % primary.zeo_port,
         '127.0.0.1:%d' % replica.zeo_port],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    return done.returncode, done.stdout.decode('utf-8', 'replace')


def pack_sizes(node):
    """(size before, size after) from the node's last "pack ... done" log
    line."""
    found = re.findall(r'pack to .* UTC done in [0-9.]+ s '
                       r'\((\d+) -> (\d+) bytes\)', node.log())
    assert found, node.log()
    return tuple(int(size) for size in found[-1])


def chain(tmp_path, processes):
    """A started primary -> cascade -> leaf chain."""
    primary = ZrsdNode(tmp_path / 'primary', 'primary',
                       register=processes).start()
    cascade = ZrsdNode(tmp_path / 'cascade', 'cascade',
                       upstream=primary.repl_port, serve=True,
                       register=processes)
    leaf = ZrsdNode(tmp_path / 'leaf', 'leaf', upstream=cascade.repl_port,
                    register=processes)
    return primary, cascade, leaf


def test_zeopack_on_a_cascade_during_live_replication(tmp_path, processes):
    """zeopack packs the middle of a chain while the primary commits: its
    file shrinks, it and the leaf below it keep following, the pack is not
    replicated, and zrsd-verify agrees on both links."""
    primary, cascade, leaf = chain(tmp_path, processes)
    history = zczrs.populate(primary.zeo_address, transactions=400,
                             undo_every=100)
    cascade.start()
    leaf.start()
    leaf.wait_for_tid(history.last_tid)

    with Writer(primary) as writer:
        wait_until(lambda: writer.commits >= 50, message='50 commits')
        status, output = zeopack(cascade)
        assert status == 0, output
        committed = writer.commits
        wait_until(lambda: writer.commits >= committed + 20,
                   message='20 commits after the pack')
    assert writer.error is None, writer.error
    last = primary.last_tid()
    cascade.wait_for_tid(last)
    leaf.wait_for_tid(last)

    before, after = pack_sizes(cascade)
    # How much goes depends on how many commits came during the pack.
    assert after < before, (before, after)
    log = cascade.log()
    assert re.search(r'INFO zrsd\.replica\.storage .*cascade\.fs: pack to '
                     r'.* UTC started \(\d+ bytes\)', log), log
    # The streamer serving the leaf noticed the new file.
    assert 'storage file replaced (pack)' in log, log

    status, output = verify(primary, cascade)
    assert status == 0, output
    assert 'packed history on the replica' in output, output
    assert 'objects agree' in output, output
    status, output = verify(cascade, leaf)
    assert status == 0, output
    assert 'packed history on the primary' in output, output
    status, output = verify(primary, leaf)
    assert status == 0, output
    assert 'packed' not in output, output   # the pack was not replicated

    for node in (leaf, cascade, primary):
        node.stop()
    statuses = [t[1] for t in transactions(cascade.fs_path)]
    assert 'p' in statuses and statuses[-1] == ' '
    assert 'p' not in {t[1] for t in transactions(leaf.fs_path)}
    assert os.path.getsize(cascade.fs_path) < os.path.getsize(leaf.fs_path)


def test_pack_refused(tmp_path, processes):
    """`pack refuse`: zeopack fails with ReadOnlyError, the file does not
    change, the replica logs one INFO line."""
    primary = ZrsdNode(tmp_path / 'primary', 'primary',
                       register=processes).start()
    for i in range(20):
        last = zczrs.commit_change(primary.zeo_address, 'x', i)
    replica = ZrsdNode(tmp_path / 'replica', 'replica',
                       upstream=primary.repl_port, register=processes)
    replica.zrs_lines = '  pack refuse\n'
    replica.start()
    replica.wait_for_tid(last)
    with open(replica.fs_path, 'rb') as f:
        content = f.read()

    status, output = zeopack(replica)
    assert status == 1, output
    assert 'ReadOnlyError' in output, output
    with open(replica.fs_path, 'rb') as f:
        assert f.read() == content
    assert 'client request refused, the storage is read-only' in \
        replica.log()
    assert 'pack to' not in replica.log()
    replica.stop()
    primary.stop()


def test_packed_replica_restarts_where_it_was(tmp_path, processes):
    """A packed replica, restarted, resumes after its last transaction
    (which the pack kept) and follows the primary again."""
    primary = ZrsdNode(tmp_path / 'primary', 'primary',
                       register=processes).start()
    for i in range(100):
        last = zczrs.commit_change(primary.zeo_address, 'k%d' % (i % 5),
                                   os.urandom(1000))
    replica = ZrsdNode(tmp_path / 'replica', 'replica',
                       upstream=primary.repl_port, register=processes)
    replica.start()
    replica.wait_for_tid(last)
    status, output = zeopack(replica)
    assert status == 0, output
    before, after = pack_sizes(replica)
    assert after < before / 2
    replica.stop()
    assert transactions(replica.fs_path)[-1][0] == last

    more = [zczrs.commit_change(primary.zeo_address, 'after', i)
            for i in range(5)]
    replica.start()
    assert '<zrs 1>: replica of %s, last transaction %s' % (
        replica.fs_path, last.hex()) in replica.log()
    replica.wait_for_tid(more[-1])
    status, output = verify(primary, replica)
    assert status == 0, output
    replica.stop()
    primary.stop()
