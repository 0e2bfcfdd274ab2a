"""The source histories a fake primary replays: small real FileStorages,
built with a fake clock (so they are the same on every run) and read back
with the frames a primary sends for each transaction."""
import contextlib
import datetime
import itertools
import os
import random
from unittest import mock

import ZODB
import ZODB.blob
import ZODB.FileStorage
from persistent.mapping import PersistentMapping
from ZODB.utils import z64

from harness.history import transactions
from harness.zrsd_nodes import opened
from zrsd.protocol import BLOB_BLOCK_SIZE as BLOCK


class Source:
    """A built source history: its file `path`, `txns`, and the index of
    each tid."""

    def __init__(self, path, blob_dir, txns):
        self.path, self.blob_dir, self.txns = path, blob_dir, txns
        self.index = {tid: n for n, tid in enumerate(
            [z64] + [txn.tid for txn in txns])}

    def __len__(self):
        return len(self.txns)

    def tid(self, position):
        """The tid a replica holding `position` transactions has last."""
        return self.txns[position - 1].tid if position else z64


BLOB_SIZES = [0, 1, 1000, BLOCK, BLOCK + 1, 140000]


def build_source(directory, name, ntxns, blobs=False):
    """Write a source FileStorage of about `ntxns` transactions (with the
    fake clock, so it is the same on every run) and read it back."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + '.fs')
    blob_dir = os.path.join(directory, name + '.blobs') if blobs else None
    rng = random.Random(20240611)
    ops = ['create', 'change', 'big', 'undo', 'create', 'undo',
           'change-many', 'meta']
    if blobs:
        ops += ['blob-new', 'blob-change', 'undo', 'blob-new']
    # A fake clock: 1.5 s more per call from 2020-01-01.
    clock = itertools.count(1577836801.5, 1.5)
    with mock.patch('time.time', lambda: next(clock)):
        db = ZODB.DB(ZODB.FileStorage.FileStorage(path, blob_dir=blob_dir))
        with contextlib.closing(db), opened(db) as (tm, root):
            objects, blob_objects = [], []
            created = None   # the list that got an object last transaction
            for step in range(max(1, ntxns - 1)):
                op = ops[step % len(ops)]
                tm.begin()
                txn = tm.get()
                undone, created = created, None
                if op == 'undo':
                    db.undo(db.undoLog(0, 1)[0]['id'], txn)
                    txn.note('undo')
                    if undone is not None:
                        undone.pop()   # an undone creation: gone
                elif op == 'create' or not objects:
                    obj = PersistentMapping(payload=rng.randbytes(
                        rng.randint(10, 3000)), version=0)
                    root['o%d' % len(objects)] = obj
                    objects.append(obj)
                    created = objects
                    txn.note('create o%d' % (len(objects) - 1))
                elif op in ('change', 'big', 'meta'):
                    obj = rng.choice(objects)
                    size = (rng.randint(20000, 70000) if op == 'big'
                            else rng.randint(1, 2000))
                    obj['payload'] = rng.randbytes(size)
                    obj['version'] += 1
                    if op == 'meta':
                        txn.setUser('alice\u00e9')
                        txn.note('caf\u00e9 %d' % step)
                        txn.setExtendedInfo('ticket', step)
                        txn.setExtendedInfo('when', datetime.datetime(
                            2020, 1, 1) + datetime.timedelta(hours=step))
                        txn.setExtendedInfo('tags', ['a', 'b', (1, 2.5)])
                elif op == 'change-many':
                    for obj in rng.sample(objects, min(4, len(objects))):
                        obj['version'] += 1
                elif op == 'blob-new':
                    size = BLOB_SIZES[len(blob_objects) % len(BLOB_SIZES)]
                    blob = ZODB.blob.Blob(rng.randbytes(size))
                    root['b%d' % len(blob_objects)] = blob
                    blob_objects.append(blob)
                    created = blob_objects
                    txn.note('blob of %d bytes' % size)
                elif op == 'blob-change':
                    blob = rng.choice(blob_objects)
                    with blob.open('w') as f:
                        f.write(rng.randbytes(rng.choice(BLOB_SIZES)))
                tm.commit()
    return Source(path, blob_dir, transactions(path, blob_dir))


def source_size(cases_per_lane):
    """How many transactions a source needs for that many cases."""
    return max(40, min(300, 2 * cases_per_lane + 20))
