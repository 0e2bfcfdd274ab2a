"""Scenario primary-restart: `kill -9` and restart of the primary.

The primary restarts on the same ports while a cascade replica
(`replicate-from` + `replicate-to`) and a replica of the cascade are
connected and the writer commits (its ZEO client reconnects; commits
that fail meanwhile are counted, and the next one is a new transaction).
Checks: both replicas end equal to the primary.
"""
from .scenario import Scenario


class PrimaryRestart(Scenario):
    """kill -9 and restart of the primary under a cascade."""

    name = 'primary-restart'

    def run(self, counts):
        self.start_primary()
        self.wait_commits(200)
        cascade = self.node('cascade', upstream=self.primary.repl_port,
                            serve=True).start()
        leaf = self.node('leaf', upstream=cascade.repl_port).start()
        self.wait_caught_up(leaf)
        for _ in range(counts['primary_restarts']):
            if self.rng.random() < 0.5:
                self.burst(self.rng.uniform(0.2, 2.0))
            else:
                self.pause(self.rng.uniform(0.2, 2.0))
            self.primary.kill()
            self.count('primary kills')
            self.pause(self.rng.uniform(0.0, 1.0))
            self.primary.start()
            self.wait_commits(20)      # the writer is back
        self.settle([cascade, leaf])
        self.writer_summary()
        if self.writer.uncertain:
            self.say('%d commits had an unknown outcome (the primary died '
                     'during the commit)' % self.writer.uncertain)
        self.compare(cascade)
        self.compare(leaf)
