"""Record a replica's workload, and judge the crash states it can leave."""
import os
import random
import shutil
from contextlib import closing
from types import SimpleNamespace

import ZODB.FileStorage

from harness.history import blob_problems, copy_transaction
from harness.stream import replicate
from zrsd import disk
from zrsd.replica.storage import ReplicaStorage, open_replica_file

from . import model
from .recorder import Recorder

DATA, BLOBS = 'Data.fs', 'blobs'


def open_replica(root):
    """The replica storage under `root`, opened as zrsd opens it."""
    path, blob_dir = os.path.join(root, DATA), os.path.join(root, BLOBS)
    return ReplicaStorage(disk.opened(path, lambda: open_replica_file(
        path, lambda: ZODB.FileStorage.FileStorage(path, blob_dir=blob_dir)),
        blob_dir))


def apply(replica, txns):
    """Send `txns` to `replica` as a primary does, then sync."""
    replicate(replica.writer, txns)
    replica.writer.sync()


def record(root, txns, seed):
    """The operations of a replica under `root` applying `txns` in groups
    of 1-5, each live (fsync per commit) or deferred (one fsync)."""
    rng = random.Random(seed)
    os.makedirs(root)
    with Recorder(root) as recorder:
        replica = open_replica(root)
        # The ZEO server the replica publishes to: records each tid.
        replica.registerDB(SimpleNamespace(
            invalidate=lambda tid, oids: recorder.publish(tid)))
        done = 0
        while done < len(txns):
            group = txns[done:done + rng.randint(1, 5)]
            replica.writer.defer_sync = rng.random() < 0.5
            apply(replica, group)
            done += len(group)
        replica.close()
    return recorder.ops


def _history(replica):
    fs = replica.file_storage
    return [copy_transaction(t, fs) for t in fs.iterator()]


def judge(state, source, scratch, resume):
    """The violations in `state` (`resume`: replicating on too)."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    state.write_to(scratch)
    try:
        replica = open_replica(scratch)
    except Exception as exc:
        return ['does not open: %s: %s' % (type(exc).__name__, exc)]
    with closing(replica):
        return list(_violations(replica, state, source, resume))


def _violations(replica, state, source, resume):
    history = _history(replica)
    if history != source[:len(history)]:
        yield 'not a prefix of the primary\'s history (%d transactions)' % (
            len(history))
        return
    tids = [t.tid for t in history]
    if state.published is not None and state.published not in tids:
        yield 'published %s lost (last %s)' % (
            state.published.hex(), tids[-1].hex() if tids else 'none')
    yield from blob_problems(history, source)
    if resume:
        try:
            apply(replica, source[len(history):])
        except Exception as exc:
            yield 'does not resume: %s: %s' % (type(exc).__name__, exc)
            return
        history = _history(replica)
        if history != source:
            yield 'did not converge after resuming'
        else:
            yield from blob_problems(history, source)


def check(ops, source, scratch, rng, per_point, every=1, resume_every=10):
    """Judge `per_point` states at every `every`-th crash point; (states
    checked, [violations with their state's label])."""
    checked, violations = 0, []
    for k in range(0, len(ops) + 1, every):
        for state in model.states(ops, k, rng, per_point):
            violations.extend('%s: %s' % (state.label, v) for v in judge(
                state, source, scratch, checked % resume_every == 0))
            checked += 1
    return checked, violations
