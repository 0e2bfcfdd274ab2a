"""A real zc.zrs 3.1 primary (`ZcZrsPrimary`, runzeo with `%import zc.zrs`
in a subprocess: zc.zrs is never imported here), `populate()` (a varied
deterministic history), `commit_change` and `opened` (a connection).
"""
import contextlib
import dataclasses
import os
import random

import transaction
import ZEO
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping

from .process import Node, config_text, free_port


class ZcZrsPrimary(Node):
    """A zc.zrs primary: ZEO (writable) on `zeo_port`, ZRS on `repl_port`;
    with `blobs`, a `blob-dir` (zc.zrs then speaks zrs2.1)."""

    read_only = False

    def __init__(self, directory, name='primary', register=None,
                 blobs=False):
        super().__init__(directory, name, register)
        self.repl_port = free_port()
        self.blob_dir = (os.path.join(self.directory, name + '.blobs')
                         if blobs else None)

    def config(self):
        return config_text(self.zeo_port, self.fs_path,
                           replicate_to=self.repl_port, blob_dir=self.blob_dir,
                           header='%import zc.zrs\n')

    def ready(self):
        # ZEO's server, then zc.zrs's Twisted port (from another thread).
        return super().ready() + ('starting on %d' % self.repl_port,)


@contextlib.contextmanager
def opened(db):
    """(transaction manager, root) of a new connection of `db`, aborted
    and closed at the end."""
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    try:
        tm.begin()
        yield tm, conn.root()
    finally:
        tm.abort()
        conn.close()


@dataclasses.dataclass
class PopulateResult:
    """What `populate()` wrote (`transactions` includes the undos)."""

    transactions: int = 0
    undos: int = 0
    creation_undos: int = 0     # undos that removed object creations
    objects: int = 0            # objects created
    last_tid: bytes = dataclasses.field(default=None, repr=False)


def _payload(rng):
    """Random record data: mostly small, a fair share of KBs, a few tens
    of KB."""
    r = rng.random()
    return rng.randbytes(rng.randint(20, 800) if r < 0.75 else
                         rng.randint(1000, 6000) if r < 0.97 else
                         rng.randint(8000, 24000))


USERS = ['alice', 'bob', 'zoë', 'admin']
NOTES = ['edit', 'bulk import', 'fix typo', 'café ✓ résumé', 'nightly job']


def populate(address, transactions=3000, seed=20240611, undo_every=250):
    """Commit a deterministic history to the ZEO server at `address`:
    1-10 objects of up to ~24 KB a transaction, a third with metadata,
    every `undo_every`-th undone (every other one a creation)."""
    rng = random.Random(seed)
    result = PopulateResult(transactions=1)
    with contextlib.closing(ZEO.DB(address)) as db, opened(db) as (tm, root):
        root['items'] = items = OOBTree()
        root['counter'] = 0
        tm.get().note('zrsd e2e: create the item tree')
        tm.commit()
        next_key = 0
        for i in range(1, transactions + 1):
            is_undo_slot = undo_every and i % undo_every == 0
            txn = tm.begin()
            creating = is_undo_slot and (i // undo_every) % 2 == 0
            for _ in range(rng.randint(1, 10)):
                if creating or next_key < 20 or rng.random() < 0.3:
                    items[next_key] = PersistentMapping(
                        payload=_payload(rng), version=0)
                    next_key += 1
                    result.objects += 1
                else:
                    obj = items[rng.randrange(next_key)]
                    obj['payload'] = _payload(rng)
                    obj['version'] = obj.get('version', 0) + 1
            if rng.random() < 0.1:
                root['counter'] = root['counter'] + 1
            if rng.random() < 0.35 or is_undo_slot:
                txn.setUser(rng.choice(USERS))
                txn.note(rng.choice(NOTES))
                txn.setExtendedInfo('batch', i // 100)
                txn.setExtendedInfo('source', 'zrsd-e2e')
                if rng.random() < 0.5:
                    txn.setExtendedInfo('tags', ['a', 'b', str(i)])
                    txn.setExtendedInfo('meta', {'n': i, 'ok': True,
                                                 'ratio': i / 7.0,
                                                 'none': None})
            tm.commit()
            result.transactions += 1
            if is_undo_slot:
                db.undo(db.undoLog(0, 1)[0]['id'], tm.begin())
                tm.get().note('undo')
                tm.commit()
                result.undos += 1
                result.transactions += 1
                result.creation_undos += bool(creating)
                # Undone creations removed keys: number after what is left.
                tm.begin()
                next_key = (items.maxKey() + 1) if len(items) else 0
                tm.abort()
        result.last_tid = db.lastTransaction()
    return result


def commit_change(address, key, value):
    """One transaction on a ZEO server: root[key] = value; returns its tid."""
    with contextlib.closing(ZEO.DB(address)) as db:
        with db.transaction('zrsd e2e: change %s' % key) as conn:
            root = conn.root()
            root[key] = value
        return root._p_serial
