"""Packing replicas with `zeopack`, as operators of zc.zrs secondaries do:
never replicated, the current state stays the primary's (`zrsd-verify`);
`pack refuse` keeps a replica's file untouched."""
import os
import pathlib
import re

from harness import zczrs
from harness.history import transactions
from harness.process import run, stop_all, verify, wait_until
from harness.zrsd_nodes import Writer


def pack_sizes(node):
    """(size before, size after) of the node's last pack, from its log."""
    found = re.findall(r'pack to .* UTC done in [0-9.]+ s '
                       r'\((\d+) -> (\d+) bytes\)', node.log())
    assert found, node.log()
    return tuple(int(size) for size in found[-1])


def test_zeopack_on_a_cascade_during_live_replication(node):
    """zeopack packs the middle of a chain under commits: it shrinks, it
    and its leaf follow, the pack is not replicated, zrsd-verify agrees."""
    primary = node('primary').start()
    cascade = node('cascade', upstream=primary.repl_port, serve=True)
    leaf = node('leaf', upstream=cascade.repl_port)
    history = zczrs.populate(primary.zeo_address, transactions=400,
                             undo_every=100)
    cascade.start()
    leaf.start()
    leaf.wait_for_tid(history.last_tid)
    with Writer(primary) as writer:
        wait_until(lambda: writer.commits >= 50, message='50 commits')
        run('zeopack', cascade.zeo_arg, timeout=300)
        committed = writer.commits
        wait_until(lambda: writer.commits >= committed + 20,
                   message='20 commits after the pack')
    assert writer.error is None, writer.error
    last = primary.last_tid()
    cascade.wait_for_tid(last)
    leaf.wait_for_tid(last)
    before, after = pack_sizes(cascade)
    assert after < before, (before, after)
    log = cascade.log()
    assert re.search(r'INFO zrsd\.replica\.storage .*cascade\.fs: pack to '
                     r'.* UTC started \(\d+ bytes\)', log), log
    # The streamer serving the leaf noticed the new file.
    assert 'storage file replaced (pack)' in log, log
    for nodes, expected in (
            ((primary, cascade), ('packed history on the replica',
                                  'objects agree')),
            ((cascade, leaf), ('packed history on the primary',))):
        output = verify(*(n.zeo_arg for n in nodes), timeout=300)
        assert all(e in output for e in expected), output
    output = verify(primary.zeo_arg, leaf.zeo_arg, timeout=300)
    assert 'packed' not in output, output   # the pack was not replicated
    stop_all(leaf, cascade, primary)
    statuses = [t[1] for t in transactions(cascade.fs_path)]
    assert 'p' in statuses and statuses[-1] == ' '
    assert 'p' not in {t[1] for t in transactions(leaf.fs_path)}
    assert os.path.getsize(cascade.fs_path) < os.path.getsize(leaf.fs_path)


def test_pack_refused(node):
    """`pack refuse`: zeopack fails, the file stays, one INFO line."""
    primary = node('primary').start()
    for i in range(20):
        last = primary.commit('x', i)
    replica = node('replica', upstream=primary.repl_port,
                   zrs_lines='  pack refuse\n').start()
    replica.wait_for_tid(last)
    content = pathlib.Path(replica.fs_path).read_bytes()
    done = run('zeopack', replica.zeo_arg, status=1, timeout=300)
    assert 'ReadOnlyError' in done.stdout + done.stderr, done
    assert pathlib.Path(replica.fs_path).read_bytes() == content
    assert 'client request refused, the storage is read-only' in replica.log()
    assert 'pack to' not in replica.log()
    stop_all(replica, primary)


def test_packed_replica_restarts_where_it_was(node):
    """A packed replica, restarted, resumes after its last transaction."""
    primary = node('primary').start()
    for i in range(100):
        last = primary.commit('k%d' % (i % 5), os.urandom(1000))
    replica = node('replica', upstream=primary.repl_port).start()
    replica.wait_for_tid(last)
    run('zeopack', replica.zeo_arg, timeout=300)
    before, after = pack_sizes(replica)
    assert after < before / 2
    replica.stop()
    assert transactions(replica.fs_path)[-1][0] == last
    more = [primary.commit('after', i) for i in range(5)]
    replica.start()
    assert '<zrs 1>: replica of %s, last transaction %s' % (
        replica.fs_path, last.hex()) in replica.log()
    replica.wait_for_tid(more[-1])
    verify(primary.zeo_arg, replica.zeo_arg, timeout=300)
    stop_all(replica, primary)
