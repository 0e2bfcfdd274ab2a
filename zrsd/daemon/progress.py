"""Catch-up progress: periodic log lines with rate and position.

`Progress.committed()` is called for every applied transaction, `tick()`
periodically (both from the reactor thread).  A line is logged per interval
in which transactions were applied, and one line when the stream goes idle
("caught up").
"""
import logging
import time

from ZODB.TimeStamp import TimeStamp

from zrsd.tids import tid_time

logger = logging.getLogger(__name__)


class Progress:
    """Accumulate applied-transaction counts and report them."""

    def __init__(self, name, clock=time.time, log=logger):
        self.name = name
        self.clock = clock
        self.log = log
        self.transactions = 0      # totals since start
        self.bytes = 0
        self.last_tid = None
        self.last_commit_at = None
        self._interval_transactions = 0
        self._interval_bytes = 0
        self._interval_started = clock()
        self._active = False
        self.rate = 0.0            # transactions/s over the last interval

    def committed(self, tid, nbytes):
        self.transactions += 1
        self.bytes += nbytes
        self._interval_transactions += 1
        self._interval_bytes += nbytes
        self.last_tid = tid
        self.last_commit_at = self.clock()

    def tick(self):
        now = self.clock()
        elapsed = max(now - self._interval_started, 1e-9)
        count = self._interval_transactions
        self.rate = count / elapsed
        if count:
            behind = max(0.0, now - tid_time(self.last_tid))
            self.log.info(
                '%s: applied %d transactions (%.1f MB) in %.1fs, %.0f txn/s, '
                '%.2f MB/s; at %s (%s UTC), %.1fs behind; total %d '
                'transactions, %.1f MB',
                self.name, count, self._interval_bytes / 1e6, elapsed,
                count / elapsed, self._interval_bytes / 1e6 / elapsed,
                self.last_tid.hex(), TimeStamp(self.last_tid),
                behind, self.transactions, self.bytes / 1e6)
            self._active = True
        elif self._active:
            self.log.info('%s: caught up at %s (%s UTC); stream idle',
                          self.name, self.last_tid.hex(),
                          TimeStamp(self.last_tid))
            self._active = False
        self._interval_transactions = self._interval_bytes = 0
        self._interval_started = now
