"""Scenario kill-replica: `kill -9` of a replica, then restart.

The kill lands at a random moment of one of three phases, in rotation:
start-up (opening the file, rebuilding the index after the previous
kill), catch-up (the writer bursts while the replica is down, so it
restarts behind; the kill lands while the backlog streams in) and live
(caught up, the writer committing).  Checks: the final replica file
equals the primary's.
"""
import os

import ZODB.FileStorage
from ZODB.utils import z64

from zrsd.replica.storage import last_committed_tid

from .scenario import Scenario


class KillReplica(Scenario):
    """kill -9 of a replica at start-up, during catch-up and live."""

    name = 'kill-replica'

    def run(self, counts):
        self.start_primary()
        self.writer.burst = True
        self.wait_commits(counts['initial_commits'])
        self.writer.burst = False
        replica = self.node('replica', upstream=self.primary.repl_port)
        phases = ['catch-up', 'live', 'start-up']
        self.rng.shuffle(phases)
        for cycle in range(counts['replica_kills']):
            phase = phases[cycle % 3]
            if phase == 'catch-up':
                # A backlog of large blobs and small transactions, so
                # that streaming it takes a while.
                self.writer.heavy = True
                self.pause(self.rng.uniform(0.3, 1.0))
                self.writer.heavy = False
                self.burst(self.rng.uniform(0.3, 1.0))
            before = self.file_last_tid(replica)
            behind = self.writer.last_tid
            replica.start()
            if phase == 'start-up':
                self.pause(self.rng.uniform(0.0, 1.0))
            elif phase == 'catch-up':
                self.log_wait(replica, r'connected \(zrs2\.1\)')
                self.pause(self.rng.uniform(0.0, 0.4))
            else:
                self.wait_caught_up(replica)
                self.pause(self.rng.uniform(0.0, 1.0))
            replica.kill()
            # Where the kill landed, by what the file holds afterwards.
            after = self.file_last_tid(replica)
            if after == before:
                landed = 'before applying anything'
            elif after < behind:
                landed = 'during catch-up'
            else:
                landed = 'live'
            self.count('kills aimed at %s' % phase)
            self.count('kills landed %s' % landed)
        replica.start()
        self.wait_caught_up(replica)
        self.settle([replica])
        self.writer_summary()
        self.compare(replica)

    @staticmethod
    def file_last_tid(node):
        """The last committed tid in a stopped node's file (z64 if none):
        read as zrsd does on restart, not as FileStorage reports it."""
        if not os.path.exists(node.fs_path):
            return z64
        fs = ZODB.FileStorage.FileStorage(node.fs_path, read_only=True)
        try:
            return last_committed_tid(fs)
        finally:
            fs.close()
