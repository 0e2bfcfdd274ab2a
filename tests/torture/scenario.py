"""What every torture scenario shares: its nodes, its writer, its waits
and its end (`settle`, then `judges`).  A process that exits without being
told to is a crash the torture did not cause: `guard()`, run in every
wait, records it and restarts the node.
"""
import os
import random
import re
import time
import traceback
from contextlib import closing, contextmanager

from ZODB.utils import z64

from harness.chaos import ChaosProxy
from harness.process import wait_until

from . import judges
from .nodes import WAIT, TortureNode
from .workload import TortureWriter


class ScenarioFailed(Exception):
    """A scenario could not go on (a hang, a failed start)."""


class Scenario:
    """A scenario: `name`, `allowed_errors` (regexes), `run(counts)`."""

    name = None
    allowed_errors = ()

    def __init__(self, torture, rng):
        self.torture, self.rng = torture, rng
        self.directory = os.path.join(torture.workdir, self.name)
        os.makedirs(self.directory)
        self.nodes, self.proxies = [], []
        self.writer = self.primary = None

    def node(self, name, **kw):
        node = TortureNode(self.directory, name, **kw)
        self.nodes.append(node)
        return node

    def start_primary(self, commits, burst=False):
        """Start the primary and the writer; wait for `commits`."""
        self.primary = self.node('primary').start()
        self.writer = TortureWriter(
            self.primary, os.path.join(self.directory, 'writer-blobs'),
            random.Random(self.rng.random())).start()
        self.writer.burst = burst
        self.wait_commits(commits)
        self.writer.burst = False

    def proxy(self, **kw):
        """A `ChaosProxy` to the primary's ZRS port, closed at the end."""
        self.proxies.append(ChaosProxy(self.primary.repl_port, **kw))
        return self.proxies[-1]

    def count(self, key, n=1):
        self.torture.cycles['%s: %s' % (self.name, key)] += n

    def say(self, text):
        self.torture.say('  [%s] %s' % (self.name, text))

    def check_writer(self):
        if self.writer is not None and self.writer.error is not None:
            raise ScenarioFailed('the writer failed:\n%s' % ''.join(
                traceback.format_exception(self.writer.error)))

    def guard(self):
        for node in self.nodes:
            status = node.unexpected_exit()
            if status is not None:
                self.crash('%s (%s) exited with status %s; log %s' % (
                    node.name, node.role, status, node.logs[-1]))
                self.say('CRASH: %s exited with %s, restarting' % (
                    node.name, status))
                node.start()
        self.check_writer()

    def crash(self, text):
        self.torture.crashes.append('%s: %s' % (self.name, text))

    def wait(self, predicate, what, timeout=WAIT):
        try:
            return wait_until(lambda: self.guard() or predicate(), timeout,
                              message=what)
        except AssertionError as exc:
            raise ScenarioFailed(str(exc)) from None

    def pause(self, seconds):
        """A random wait that chooses a moment (the guard keeps watch)."""
        deadline = time.monotonic() + seconds
        self.wait(lambda: time.monotonic() >= deadline, 'the end of a pause',
                  seconds + WAIT)

    def wait_commits(self, count):
        target = self.writer.commits + count
        self.wait(lambda: self.writer.commits >= target,
                  '%d commits by the writer' % count)

    @contextmanager
    def writing(self, flag):
        """The writer's `flag` (`burst`, `heavy`) is set meanwhile."""
        setattr(self.writer, flag, True)
        try:
            yield
        finally:
            setattr(self.writer, flag, False)

    def burst(self, seconds, heavy=False):
        with self.writing('heavy' if heavy else 'burst'):
            self.pause(seconds)

    def backlog(self, heavy, light):
        """Heavy, then light commits ((low, high) seconds each); returns
        when the light ones began."""
        self.burst(self.rng.uniform(*heavy), heavy=True)
        start = time.time()
        self.burst(self.rng.uniform(*light))
        return start

    def wait_caught_up(self, node):
        """Wait until `node` (via /status) has the writer's last commit."""
        tid = self.writer.last_tid
        self.wait(lambda: (node.served_tid() or z64) >= tid,
                  '%s to reach %s' % (node.name, tid.hex()))

    def log_wait(self, node, pattern):
        """Wait until `node`'s current log matches `pattern`."""
        self.wait(lambda: re.search(pattern, node.log()),
                  '%r in %s' % (pattern, node.logs[-1]))

    def settle(self, replicas):
        """Stop the writer; wait until each replica serves the primary's
        last transaction over ZEO; SIGTERM everything (exit 0)."""
        self.writer.stop(WAIT)
        self.check_writer()
        for proxy in self.proxies:
            proxy.flow()
            proxy.throttle(None)
        with closing(self.primary.client(wait_timeout=WAIT)) as storage:
            last = storage.lastTransaction()
        for node in replicas:
            self.wait(lambda: node.running() and node.served_tid(),
                      '%s to serve' % node.name)
            with closing(node.client(wait_timeout=WAIT)) as storage:
                self.wait(lambda: storage.lastTransaction() == last,
                          '%s ZEO lastTransaction == %s' % (node.name,
                                                            last.hex()))
        self.guard()
        for node in list(replicas) + [self.primary]:
            status = node.stop()
            if status != 0:
                self.crash('%s exited with status %s on SIGTERM; log %s' % (
                    node.name, status, node.logs[-1]))
        w = self.writer
        errors = ', '.join('%s %d' % kv for kv in sorted(w.errors.items()))
        self.say('writer: %d commits (%d with blobs, %d undos), failed '
                 'commits: %s' % (w.commits, w.blob_commits, w.undos,
                                  errors or 'none'))
        self.count('writer commits', w.commits)

    def compare(self, *replicas):
        for replica in replicas:
            self.record(replica, *judges.compare_exact(self.primary, replica))

    def record(self, replica, compared, blobs, mismatches):
        self.torture.compared += compared
        self.torture.blobs_compared += blobs
        self.torture.mismatches.extend('%s: %s' % (self.name, m)
                                       for m in mismatches)
        self.say('%s: %d transactions, %d blob files compared, %d '
                 'mismatches' % (replica.name, compared, blobs,
                                 len(mismatches)))

    def cleanup(self):
        if self.writer is not None and self.writer.running():
            self.writer.stop(WAIT)
        for item in self.proxies + self.nodes:
            item.close()

    def scan_logs(self):
        """Report unexpected ERROR lines; (expected, unexpected) counts."""
        expected, unexpected = judges.scan_logs(
            [path for node in self.nodes for path in node.logs],
            self.allowed_errors)
        self.torture.errors.extend('%s: %s' % (self.name, e)
                                   for e in unexpected)
        return expected, len(unexpected)
