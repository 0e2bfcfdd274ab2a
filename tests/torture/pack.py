"""Scenario pack: a ZEO client packs the primary (blobs too) while replica
R1 catches up on a backlog through a link throttled to 1 MB/s; after the
last pack a fresh R2 replicates from scratch.  R2 must equal the primary;
R1 is judged by `judges.compare_after_pack`.
"""
import time
from contextlib import closing

from ZODB.utils import z64

from harness.history import iter_transactions, pack_stop_tid

from .judges import compare_after_pack
from .nodes import WAIT
from .scenario import Scenario


class Pack(Scenario):
    name = 'pack'
    # FileStorage refuses the writer's undo log during a pack; ZEO logs it.
    allowed_errors = (r'Error raised in delayed method(.|\n)*UndoError: '
                      r'.*Undo is currently disabled for database '
                      r'maintenance',)

    def run(self, counts):
        self.start_primary(counts['initial_commits'], burst=True)
        proxy = self.proxy(socket_buffer=65536)
        r1 = self.node('r1', upstream=proxy.port).start()
        self.wait_caught_up(r1)
        stops = []
        for _ in range(counts['packs']):
            r1.kill()
            self.count('r1 kills before a pack')
            # The pack time lies among the small commits of the backlog.
            start = self.backlog((0.5, 1.0), (1.0, 2.0))
            pack_time = self.rng.uniform(start, time.time())
            backlog = self.writer.last_tid
            proxy.throttle(1e6)
            r1.start()
            self.log_wait(r1, r'connected \(zrs2\.1\)')
            self.pause(self.rng.uniform(0.0, 1.0))
            behind = (r1.served_tid() or z64) < backlog
            self.pack(pack_time)
            self.count('packs while r1 was catching up' if behind else
                       'packs after r1 caught up')
            stops.append(pack_stop_tid(pack_time))
            proxy.throttle(None)
            self.wait_commits(50)
        r2 = self.node('r2', upstream=self.primary.repl_port).start()
        self.wait_caught_up(r2)
        self.settle([r1, r2])
        self.compare(r2)
        witness = None if self.writer.uncertain else set(self.writer.tids) | {
            t[0] for t in iter_transactions(r1.fs_path)
            if t[0] <= self.writer.initial_tid}
        compared, blobs, mismatches, details = compare_after_pack(
            self.primary, r1, max(stops), witness)
        self.say(details)
        self.record(r1, compared, blobs, mismatches)

    def pack(self, pack_time):
        """Pack the primary through a ZEO client, the writer going on."""
        with closing(self.primary.client(wait_timeout=WAIT,
                                         read_only=False)) as storage:
            began = time.monotonic()
            storage.pack(pack_time, wait=True)
            self.say('packed to %s in %.1fs' % (
                pack_stop_tid(pack_time).hex(), time.monotonic() - began))
        self.count('packs')
