"""Scenario kill-replica: `kill -9` of a replica at a random moment of
start-up, catch-up (a backlog streams in) or live, in rotation, then
restart.  Checks: the final replica file equals the primary's.
"""
import os
from contextlib import closing

import ZODB.FileStorage
from ZODB.utils import z64

from zrsd.replica.storage import last_committed_tid

from .scenario import Scenario


class KillReplica(Scenario):
    name = 'kill-replica'

    def run(self, counts):
        self.start_primary(counts['initial_commits'], burst=True)
        replica = self.node('replica', upstream=self.primary.repl_port)
        phases = ['catch-up', 'live', 'start-up']
        self.rng.shuffle(phases)
        for cycle in range(counts['replica_kills']):
            phase = phases[cycle % 3]
            if phase == 'catch-up':
                self.backlog((0.3, 1.0), (0.3, 1.0))
            before, behind = self.file_last_tid(replica), self.writer.last_tid
            replica.start()
            if phase == 'catch-up':
                self.log_wait(replica, r'connected \(zrs2\.1\)')
            elif phase == 'live':
                self.wait_caught_up(replica)
            self.pause(self.rng.uniform(
                0.0, 0.4 if phase == 'catch-up' else 1.0))
            replica.kill()
            after = self.file_last_tid(replica)
            landed = ('before applying anything' if after == before else
                      'during catch-up' if after < behind else 'live')
            self.count('kills aimed at %s' % phase)
            self.count('kills landed %s' % landed)
        replica.start()
        self.wait_caught_up(replica)
        self.settle([replica])
        self.compare(replica)

    @staticmethod
    def file_last_tid(node):
        """The last tid of a stopped node's file, as zrsd reads it."""
        if not os.path.exists(node.fs_path):
            return z64
        with closing(ZODB.FileStorage.FileStorage(node.fs_path,
                                                  read_only=True)) as fs:
            return last_committed_tid(fs)
