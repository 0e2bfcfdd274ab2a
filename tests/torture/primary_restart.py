"""Scenario primary-restart: `kill -9` and restart of the primary on the
same ports under a cascade and its leaf while the writer commits (its
failed commits are counted).  Checks: both replicas equal the primary.
"""
from .scenario import Scenario


class PrimaryRestart(Scenario):
    name = 'primary-restart'

    def run(self, counts):
        self.start_primary(200)
        cascade = self.node('cascade', upstream=self.primary.repl_port,
                            serve=True).start()
        leaf = self.node('leaf', upstream=cascade.repl_port).start()
        self.wait_caught_up(leaf)
        for _ in range(counts['primary_restarts']):
            wait = self.burst if self.rng.random() < 0.5 else self.pause
            wait(self.rng.uniform(0.2, 2.0))
            self.primary.kill()
            self.count('primary kills')
            self.pause(self.rng.uniform(0.0, 1.0))
            self.primary.start()
            self.wait_commits(20)      # the writer is back
        self.settle([cascade, leaf])
        if self.writer.uncertain:
            self.say('%d commits had an unknown outcome (the primary died '
                     'during the commit)' % self.writer.uncertain)
        self.compare(cascade, leaf)
