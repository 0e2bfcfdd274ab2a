"""A chain of zrsd processes, primary -> replica -> cascade replica, the
first link gated where a replica must stop half-way through catch-up."""
import time
from contextlib import closing, contextmanager

import pytest
from ZODB.serialize import referencesf
from ZODB.utils import z64

from harness import zczrs
from harness.chaos import ChaosProxy
from harness.history import (Populated, assert_same_after_pack,
                             assert_same_history, pack_stop_tid,
                             transactions)
from harness.process import stop_all, wait_until
from harness.zrsd_nodes import MB, ZrsdNode, opened, wait_for_value


@pytest.fixture(scope='module')
def populated(tmp_path_factory, module_processes):
    """1500 varied transactions committed to a zrsd primary."""
    node = ZrsdNode(tmp_path_factory.mktemp('chain-populated'), 'primary',
                    register=module_processes)
    result = zczrs.populate(node.start().zeo_address, transactions=1500)
    node.stop()
    assert result.undos and result.creation_undos
    return Populated(node.fs_path)


def chain(node, upstream_port):
    """Started: a cascade of `upstream_port` (middle), a cascade of it."""
    middle = node('replica', upstream=upstream_port, serve=True).start()
    return middle, node('cascade', upstream=middle.repl_port,
                        serve=True).start()


@contextmanager
def held_half_way(populated, node):
    """A primary on `populated`, a gate holding its stream after half, the
    `chain` behind it: (primary, gate, middle, end, the middle's link)."""
    primary = populated.copy_to(node('primary')).start()
    with closing(ChaosProxy(primary.repl_port,
                            hold_after=populated.fs_size // 2)) as gate:
        middle, end = chain(node, gate.port)
        link = gate.wait_for_link(0)
        wait_until(lambda: middle.check_alive() and link.held.is_set(),
                   message='the replica to receive half of the stream')
        yield primary, gate, middle, end, link


def pack(node):
    """Pack the primary through a ZEO client; returns the pack time."""
    with closing(node.client(read_only=False)) as storage:
        pack_time = time.time()
        storage.pack(pack_time, referencesf)
    return pack_time


def test_chain_pack_mid_stream(populated, node):
    """The primary packs while the middle is held half-way: one link
    crosses the pack, the end sees new commits, all agree."""
    with held_half_way(populated, node) as (primary, gate, middle, end,
                                            link):
        assert link.handshake() == (b'zrs2.0', z64)
        partial = middle.last_tid()
        assert z64 < partial < populated.last_tid
        pack_time = pack(primary)
        gate.release()
        more = zczrs.populate(primary.zeo_address, transactions=300,
                              seed=7, undo_every=100)
        assert more.undos == 3 and more.creation_undos == 1
        middle.wait_for_tid(more.last_tid)
        end.wait_for_tid(more.last_tid)
        with closing(end.db(read_only=True)) as db, \
                opened(db) as (tm, root):
            assert 'final' not in root
            final_tid = primary.commit('final', 'seen at the end')
            wait_for_value(tm, root, 'final', 'seen at the end', end)
            assert root._p_serial == final_tid
        middle.wait_for_tid(final_tid)
        assert primary.last_tid() == final_tid
        assert len(gate.links) == 1 and not link.closed.is_set()
        assert 'storage file replaced (pack)' in primary.log()
        stop_all(end, middle, primary)
    packed, later, objects = assert_same_after_pack(
        primary.fs_path, middle.fs_path, pack_time)
    assert_same_after_pack(primary.fs_path, end.fs_path, pack_time)
    compared = assert_same_history(middle.fs_path, end.fs_path)
    # The pack did rewrite history the replicas had received unpacked.
    assert compared > packed + later
    assert later == more.transactions + 1
    print('\npack mid-stream: held at %s; primary kept %d packed + %d'
          ' later; %d objects' % (partial.hex(), packed, later, objects))


def test_fresh_chain_after_pack(populated, node):
    """Replicas started after a pack end identical (status 'p' too)."""
    primary = populated.copy_to(node('primary')).start()
    pack_time = pack(primary)
    more = zczrs.populate(primary.zeo_address, transactions=100, seed=11,
                          undo_every=50)
    middle, end = chain(node, primary.repl_port)
    middle.wait_for_tid(more.last_tid)
    end.wait_for_tid(more.last_tid)
    stop_all(end, middle, primary)
    history = transactions(primary.fs_path)
    assert any(t[1] == 'p' for t in history
               if t[0] <= pack_stop_tid(pack_time))
    assert len(history) < len(populated.history) + more.transactions
    for each in (middle, end):
        assert assert_same_history(primary.fs_path, each.fs_path) == \
            len(history)


@pytest.mark.parametrize('pack_while_down', [False, True],
                         ids=['plain', 'pack-while-down'])
def test_replica_restart_mid_stream(populated, node, pack_while_down):
    """The middle stopped half-way (the primary packing or not) resumes
    after its last transaction; the end reconnects; all agree."""
    with held_half_way(populated, node) as (primary, gate, middle, end, _):
        middle.stop()   # perhaps still applying what the gate let through
        committed = transactions(middle.fs_path)
        assert committed == populated.history[:len(committed)]
        assert 0 < len(committed) < len(populated.history)
        resume_tid = committed[-1][0]
        pack_time = pack(primary) if pack_while_down else None
        more = zczrs.populate(primary.zeo_address, transactions=100,
                              seed=13, undo_every=50)
        gate.release()
        middle.start()
        assert gate.wait_for_link(1).handshake() == (b'zrs2.0', resume_tid)
        middle.wait_for_tid(more.last_tid)
        end.wait_for_tid(more.last_tid)
        stop_all(end, middle, primary)
    if pack_while_down:
        assert_same_after_pack(primary.fs_path, middle.fs_path, pack_time)
        assert_same_after_pack(primary.fs_path, end.fs_path, pack_time)
        assert 'p' in {t[1] for t in transactions(middle.fs_path)
                       if t[0] > resume_tid}
    else:
        assert_same_history(primary.fs_path, middle.fs_path)
    assert_same_history(middle.fs_path, end.fs_path)


def test_fresh_replica_catch_up_rate(populated, node):
    """A fresh replica catches up with the primary; the rate printed."""
    primary = populated.copy_to(node('primary')).start()
    replica = node('replica', upstream=primary.repl_port)
    started = time.monotonic()
    replica.start().wait_for_tid(populated.last_tid)
    elapsed = time.monotonic() - started
    stop_all(replica, primary)
    assert assert_same_history(primary.fs_path, replica.fs_path) == \
        len(populated.history)
    print('\nzrsd -> zrsd catch-up: %d transactions, %.1f MB in %.2f s'
          ' (%.0f txn/s, %.1f MB/s)' % (
              len(populated.history), populated.fs_size / MB, elapsed,
              len(populated.history) / elapsed,
              populated.fs_size / MB / elapsed))
