"""Reconnect policy: exponential backoff with jitter, quiet repeated errors.

Pure code: no sockets, no clocks of its own (callers pass `now`).
"""
import random


def backoff_delay(attempt, floor, cap, jitter=0.25, rand=random.random):
    """Seconds to wait before reconnect attempt number `attempt` (0-based).

    Doubles from `floor` up to `cap`, then shortens by up to `jitter` (a
    fraction) at random so that many replicas of one primary do not
    reconnect in lock step.  Never below `floor`, never above `cap`.
    """
    if attempt < 0:
        raise ValueError('attempt must be >= 0')
    # Cap the exponent first: 2 ** 10000 is a big integer, not an error.
    base = min(cap, floor * 2 ** min(attempt, 64))
    return max(floor, base * (1 - jitter * rand()))


class RepeatLimiter:
    """Decide whether a message is worth logging again.

    The first occurrence of a message is logged; identical messages that
    follow within `interval` seconds are counted and suppressed; the next one
    logged after that carries the count.
    """

    def __init__(self, interval=300.0):
        self.interval = interval
        self._last = None
        self._logged_at = None
        self._suppressed = 0

    def check(self, message, now):
        """Return None to stay quiet, or the text to log."""
        if (message == self._last and self._logged_at is not None
                and now - self._logged_at < self.interval):
            self._suppressed += 1
            return None
        text = message
        if message == self._last and self._suppressed:
            text = '%s (repeated %d times)' % (message, self._suppressed)
        self._last, self._logged_at, self._suppressed = message, now, 0
        return text

    def reset(self):
        self._last = self._logged_at = None
        self._suppressed = 0
