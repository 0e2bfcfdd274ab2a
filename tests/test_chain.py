"""A chain of zrsd processes: primary -> replica (cascade) -> end replica.

Everything is real: three `zrsd` processes started from config files, ZEO
clients on 127.0.0.1, the replication links over TCP (the first one through
`GatedProxy` where a test must stop a replica half-way through its
catch-up without relying on timing).  The middle node replicates from
the primary and serves the end node, so it has both `replicate-from` and
`replicate-to`; the end node has both too (a cascade nobody follows).

Histories are compared record by record once every process stopped.  A
pack on the primary makes exact equality impossible for the packed part of
the history; `harness.history.assert_same_after_pack` says what is compared
instead.  Figures are printed for `pytest -s`, never asserted.
"""
import os
import shutil
import time

import pytest
import transaction
from ZODB.serialize import referencesf
from ZODB.utils import z64

from harness import zczrs
from harness.history import (assert_same_after_pack, assert_same_history,
                             pack_stop_tid, transactions)
from harness.process import wait_until
from harness.zrsd_nodes import GatedProxy, MB, ZrsdNode

POPULATE_TRANSACTIONS = 1500


class Populated:
    """A stopped zrsd primary's files holding the `populate()` history."""

    def __init__(self, node, result):
        self.fs_path = node.fs_path
        self.fs_size = os.path.getsize(node.fs_path)
        self.result = result
        self.history = transactions(node.fs_path)
        self.last_tid = self.history[-1][0]

    def primary(self, directory, register):
        """A stopped zrsd primary on a private copy of the files."""
        node = ZrsdNode(directory / 'primary', 'primary', register=register)
        shutil.copyfile(self.fs_path, node.fs_path)
        shutil.copyfile(self.fs_path + '.index', node.fs_path + '.index')
        return node


@pytest.fixture(scope='module')
def populated(tmp_path_factory):
    """~1500 transactions (undos, undone creations, extension data)
    committed through a ZEO client of a zrsd primary, once per module."""
    node = ZrsdNode(tmp_path_factory.mktemp('chain-populated'), 'primary')
    node.start()
    try:
        result = zczrs.populate(node.zeo_address,
                                transactions=POPULATE_TRANSACTIONS)
        node.stop()
    finally:
        node.close()
    assert result.undos and result.creation_undos
    return Populated(node, result)


def chain(directory, upstream_port, register):
    """The middle and end nodes (not started): a replica of
    `upstream_port` that serves ZRS, and a cascade replica of it."""
    middle = ZrsdNode(directory / 'replica', 'replica',
                      upstream=upstream_port, serve=True, register=register)
    end = ZrsdNode(directory / 'cascade', 'cascade',
                   upstream=middle.repl_port, serve=True, register=register)
    return middle, end


def held_half_way(chain_nodes, gate):
    """Start the middle and end nodes behind `gate` (which holds after
    half the primary's stream); return the middle's first link once the
    gate holds it."""
    middle, end = chain_nodes
    middle.start()
    end.start()
    link = gate.wait_for_link(0)
    wait_until(lambda: middle.check_alive() and link.held.is_set(),
               message='the replica to receive half of the stream')
    return link


def pack(node):
    """Pack the primary through a ZEO client (returns when done); returns
    the pack time."""
    storage = node.client(read_only=False)
    try:
        pack_time = time.time()
        storage.pack(pack_time, referencesf)
        return pack_time
    finally:
        storage.close()


def stop_all(*nodes):
    for node in nodes:
        node.stop()


def test_chain_pack_mid_stream(populated, tmp_path, processes):
    """The primary packs while the replica is half-way through catching up;
    both replicas end in agreement with the packed primary.

    The replica's link goes through a gate that holds the stream after half
    of the history, so at pack time the replica is half-way, whatever the
    timing, and the primary's streamer for it is stuck behind
    back-pressure.  Released, the same connection goes on: the streamer
    finishes the old file, notices the replaced file and resumes in it;
    more commits (with undos) follow on the primary.  A ZEO client of the
    end node connected before a final commit sees it.

    What "identical" means after a pack (see `assert_same_after_pack`): the
    replicas keep the unpacked history they received, the primary's
    transactions up to the pack time were rewritten (non-current and
    unreachable records dropped, transactions left empty dropped, data
    inlined instead of back pointers, status 'p').  So the transactions
    after the pack time must be identical record for record; each packed
    primary transaction must be found in the replica with the same metadata
    and the same records for the oids it kept; and every object in the
    primary's index loads the same data and serial.  The end node follows
    the middle one, which never packed: those two are identical
    (`assert_same_history`).
    """
    primary = populated.primary(tmp_path, processes).start()
    gate = GatedProxy(primary.repl_port, hold_after=populated.fs_size // 2)
    try:
        middle, end = chain(tmp_path, gate.port, processes)
        link = held_half_way((middle, end), gate)
        assert link.handshake() == (b'zrs2.0', z64)
        partial = middle.last_tid()
        assert z64 < partial < populated.last_tid

        # The primary's streamer for this link is paused by back-pressure
        # somewhere in the old file (or, if the socket buffers swallowed
        # the rest, waiting at its end): either way it crosses the pack.
        pack_time = pack(primary)
        gate.release()

        more = zczrs.populate(primary.zeo_address, transactions=300,
                              seed=7, undo_every=100)
        assert more.undos == 3 and more.creation_undos == 1
        middle.wait_for_tid(more.last_tid)
        end.wait_for_tid(more.last_tid)

        # A client of the end of the chain, connected before the commit,
        # sees it without reconnecting.
        db = end.db(read_only=True)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            root = conn.root()
            assert 'final' not in root
            final_tid = zczrs.commit_change(primary.zeo_address, 'final',
                                            'seen at the end')

            def seen():
                end.check_alive()
                tm.begin()
                return root.get('final') == 'seen at the end'
            wait_until(seen, message='the final commit at the chain end')
            assert root._p_serial == final_tid
        finally:
            tm.abort()
            conn.close()
            db.close()
        middle.wait_for_tid(final_tid)
        assert primary.last_tid() == final_tid

        # The same connection carried the stream across the pack.
        assert len(gate.links) == 1 and not link.closed.is_set()
        assert 'storage file replaced (pack)' in primary.log()
        stop_all(end, middle, primary)
    finally:
        gate.close()

    packed, later, objects = assert_same_after_pack(
        primary.fs_path, middle.fs_path, pack_time)
    assert_same_after_pack(primary.fs_path, end.fs_path, pack_time)
    compared = assert_same_history(middle.fs_path, end.fs_path)
    # The pack did rewrite history the replicas had received unpacked.
    assert compared > packed + later
    assert later == more.transactions + 1
    print('\npack mid-stream: replica at %d/%d transactions when held;'
          ' primary kept %d packed + %d later, replicas hold %d;'
          ' %d current objects compared' % (
              len([t for t in transactions(middle.fs_path)
                   if t[0] <= partial]), len(populated.history),
              packed, later, compared, objects))


def test_fresh_chain_after_pack(populated, tmp_path, processes):
    """Replicas started empty after the primary packed get the packed
    history and end identical to it, transaction by transaction (status
    'p' included)."""
    primary = populated.primary(tmp_path, processes).start()
    pack_time = pack(primary)
    more = zczrs.populate(primary.zeo_address, transactions=100, seed=11,
                          undo_every=50)
    middle, end = chain(tmp_path, primary.repl_port, processes)
    middle.start()
    end.start()
    middle.wait_for_tid(more.last_tid)
    end.wait_for_tid(more.last_tid)
    stop_all(end, middle, primary)

    history = transactions(primary.fs_path)
    stop = pack_stop_tid(pack_time)
    assert any(t[1] == 'p' for t in history if t[0] <= stop)
    assert len(history) < len(populated.history) + more.transactions
    assert assert_same_history(primary.fs_path, middle.fs_path) == \
        len(history)
    assert assert_same_history(primary.fs_path, end.fs_path) == len(history)


@pytest.mark.parametrize('pack_while_down', [False, True],
                         ids=['plain', 'pack-while-down'])
def test_replica_restart_mid_stream(populated, tmp_path, processes,
                                    pack_while_down):
    """SIGTERM the middle replica half-way through catch-up, commit more
    (and, in one variant, pack the primary) while it is down, start it
    again: it resumes after its last committed transaction and both
    replicas end identical to the primary (after a pack: in the sense of
    `assert_same_after_pack`, the resumed part arriving in packed form).
    The end node stays up and reconnects to the restarted middle one.
    """
    primary = populated.primary(tmp_path, processes).start()
    gate = GatedProxy(primary.repl_port, hold_after=populated.fs_size // 2)
    try:
        middle, end = chain(tmp_path, gate.port, processes)
        held_half_way((middle, end), gate)
        # It may still be applying what the gate let through: stopping it
        # now stops it mid-stream.
        middle.stop()

        committed = transactions(middle.fs_path)
        assert committed == populated.history[:len(committed)]
        assert 0 < len(committed) < len(populated.history)
        resume_tid = committed[-1][0]

        pack_time = pack(primary) if pack_while_down else None
        more = zczrs.populate(primary.zeo_address, transactions=100,
                              seed=13, undo_every=50)
        gate.release()
        middle.start()
        second = gate.wait_for_link(1)
        assert second.handshake() == (b'zrs2.0', resume_tid)
        middle.wait_for_tid(more.last_tid)
        end.wait_for_tid(more.last_tid)
        stop_all(end, middle, primary)
    finally:
        gate.close()

    if pack_while_down:
        assert_same_after_pack(primary.fs_path, middle.fs_path, pack_time)
        assert_same_after_pack(primary.fs_path, end.fs_path, pack_time)
        # The part received after the restart came in packed form.
        statuses = {t[1] for t in transactions(middle.fs_path)
                    if t[0] > resume_tid}
        assert 'p' in statuses
    else:
        assert_same_history(primary.fs_path, middle.fs_path)
    assert_same_history(middle.fs_path, end.fs_path)
    print('\nrestart (%s): stopped with %d/%d transactions, resumed after'
          ' %s' % ('pack while down' if pack_while_down else 'plain',
                   len(committed), len(populated.history), resume_tid.hex()))


def test_fresh_replica_catch_up_rate(populated, tmp_path, processes):
    """A fresh replica catches up with the populated primary; prints the
    rate (transactions/s, MB/s of the primary's file) measured from the
    replica's start to a ZEO client seeing the primary's last tid."""
    primary = populated.primary(tmp_path, processes).start()
    replica = ZrsdNode(tmp_path / 'replica', 'replica',
                       upstream=primary.repl_port, register=processes)
    started = time.monotonic()
    replica.start()
    replica.wait_for_tid(populated.last_tid)
    elapsed = time.monotonic() - started
    stop_all(replica, primary)
    assert assert_same_history(primary.fs_path, replica.fs_path) == \
        len(populated.history)
    print('\nzrsd -> zrsd catch-up: %d transactions, %.1f MB file in %.2f s'
          ' (%.0f txn/s, %.1f MB/s; includes process start)' % (
              len(populated.history), populated.fs_size / MB, elapsed,
              len(populated.history) / elapsed,
              populated.fs_size / MB / elapsed))
