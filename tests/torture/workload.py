"""The torture's load: random transactions of 1-4 objects, blobs of 0
to 400 KB, undos, users, notes and extension data, on the harness's
`Writer` thread.
"""
import collections
import logging

import ZODB.blob
from BTrees.OOBTree import OOBTree
from persistent.mapping import PersistentMapping
from ZEO.Exceptions import ClientDisconnected
from ZODB.utils import z64

from harness.zrsd_nodes import Writer

from .nodes import WAIT

logger = logging.getLogger('torture')

USERS = ['alice', 'bob', 'zoë', 'cron']
NOTES = ['edit', 'import', 'café ✓', 'nightly job', '']


def blob_size(rng, heavy=False):
    """Blob sizes: tiny, medium, on the 64 KiB block boundaries, large."""
    r = rng.random() + heavy       # heavy: always large
    if r < 0.4:
        return rng.randint(0, 2000)
    if r < 0.8:
        return rng.randint(2000, 40000)
    if r < 0.95:
        return rng.choice([65535, 65536, 65537, 131072, 131073])
    return rng.randint(100000, 400000)


class TortureWriter(Writer):
    """Commits random transactions (`burst`: no pacing; `heavy`: large
    records, mostly with a blob); a failed commit is aborted, counted
    (`errors`, `uncertain`: outcome unknown) and logged, and it goes on.
    `initial_tid`: the tid before the first commit."""

    wait_timeout = WAIT   # commits wait for a restarted primary
    rate = 150.0          # commits per second, when paced

    def __init__(self, node, blob_cache, rng):
        super().__init__(node, 'torture', blob_cache)
        self.rng, self.burst, self.heavy = rng, False, False
        self.undos = self.blob_commits = self.uncertain = 0
        self.errors = collections.Counter()
        self.last_tid, self.initial_tid = z64, None

    def _commit(self, tm, conn):
        if self.initial_tid is None:
            self.initial_tid = self.db.lastTransaction()
        rng, in_commit = self.rng, False
        try:
            txn = tm.begin()
            undo = self.commits > 20 and rng.random() < 0.02
            has_blob = not undo and self._change(conn.root(), rng)
            if undo:
                info = self.db.undoLog(0, 1)
                if info:
                    self.db.undo(info[0]['id'], txn)
                    txn.note('torture: undo')
            elif rng.random() < 0.3:
                txn.setUser(rng.choice(USERS))
                txn.note(rng.choice(NOTES))
                txn.setExtendedInfo('n', self.commits)
                if rng.random() < 0.3:   # (no datetime: ZEO refuses it)
                    txn.setExtendedInfo('meta', {
                        'tags': ['a', str(self.commits)],
                        'ratio': rng.random(), 'none': None})
            in_commit = True
            tm.commit()
            self.last_tid = self.db.lastTransaction()
            self.tids.append(self.last_tid)
            self.undos += undo
            self.blob_commits += has_blob
        except Exception as exc:
            tm.abort()
            self.errors[type(exc).__name__] += 1
            disconnected = isinstance(exc, ClientDisconnected)
            self.uncertain += in_commit and disconnected
            logger.warning('writer: commit failed: %s: %s',
                           type(exc).__name__, exc, exc_info=not disconnected)
            while disconnected and not (self._stopping.is_set()
                                        or self.db.storage.is_connected()):
                self._stopping.wait(0.02)
        if not self.burst and not self.heavy:
            self._stopping.wait(self.rng.expovariate(self.rate))

    def _change(self, root, rng):
        """Change 1-4 objects and maybe a blob; True if a blob."""
        if 'items' not in root:
            root['items'] = OOBTree()
            root['blobs'] = OOBTree()
        items, blobs = root['items'], root['blobs']
        for _ in range(rng.randint(1, 4)):
            size = (rng.randint(5000, 30000) if self.heavy
                    else rng.randint(10, 1500))
            # (Not len(items): an OOBTree counts by walking its buckets.)
            if not items or items.maxKey() < 40 or rng.random() < 0.3:
                key = (items.maxKey() + 1) if items else 0
                items[key] = PersistentMapping(payload=rng.randbytes(size))
            else:
                try:
                    key = items.minKey(rng.randrange(items.maxKey() + 1))
                except ValueError:
                    key = items.maxKey()
                items[key]['payload'] = rng.randbytes(size)
        if rng.random() < (0.7 if self.heavy else 0.08):
            key = rng.randrange(30)
            data = rng.randbytes(blob_size(rng, self.heavy))
            if key in blobs and rng.random() < 0.5:
                with blobs[key].open('w') as f:
                    f.write(data)
            else:
                blobs[key] = ZODB.blob.Blob(data)
            return True
        return False
