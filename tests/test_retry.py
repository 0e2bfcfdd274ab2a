"""Unit tests for zrsd.network.retry: backoff delays and the repeated-log
limiter."""
import random

import pytest

from zrsd.network.retry import RepeatLimiter, backoff_delay


def test_backoff_doubles_from_floor_to_cap_without_jitter():
    delays = [backoff_delay(n, 1.0, 60.0, rand=lambda: 0) for n in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_backoff_with_fractional_floor():
    assert [backoff_delay(n, 0.5, 3.0, rand=lambda: 0) for n in range(5)] \
        == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_full_jitter_shortens_by_at_most_the_fraction():
    for n in range(10):
        plain = backoff_delay(n, 1.0, 60.0, rand=lambda: 0)
        shortened = backoff_delay(n, 1.0, 60.0, jitter=0.25, rand=lambda: 1)
        assert shortened == max(1.0, plain * 0.75)
        assert shortened <= plain


def test_jitter_never_goes_below_floor():
    # With full jitter the first delay would be 0.5 * floor: the floor wins.
    assert backoff_delay(0, 2.0, 60.0, jitter=0.5, rand=lambda: 1) == 2.0
    assert backoff_delay(0, 2.0, 60.0, jitter=1.0, rand=lambda: 1) == 2.0


def test_delays_always_within_floor_and_cap():
    rng = random.Random(1234)
    for _ in range(2000):
        attempt = rng.randrange(0, 200)
        floor = rng.choice([0.1, 0.5, 1.0, 5.0])
        cap = floor * rng.choice([1, 2, 10, 1000])
        jitter = rng.choice([0.0, 0.1, 0.25, 0.5, 1.0])
        delay = backoff_delay(attempt, floor, cap, jitter, rand=rng.random)
        assert floor <= delay <= cap, (attempt, floor, cap, jitter, delay)


def test_default_random_stays_within_bounds():
    for attempt in range(20):
        assert 1.0 <= backoff_delay(attempt, 1.0, 60.0) <= 60.0


def test_jittered_delays_still_grow_until_the_cap():
    # 25 % jitter cannot undo a doubling: each attempt waits longer than
    # the previous one could have, until the cap.
    for n in range(1, 6):
        longest_before = backoff_delay(n - 1, 1.0, 60.0, rand=lambda: 0)
        shortest_now = backoff_delay(n, 1.0, 60.0, rand=lambda: 1)
        assert shortest_now > longest_before


@pytest.mark.parametrize('attempt', [64, 65, 1000, 10 ** 6, 10 ** 100])
def test_huge_attempt_numbers(attempt):
    assert backoff_delay(attempt, 1.0, 60.0, rand=lambda: 0) == 60.0
    assert backoff_delay(attempt, 1.0, 60.0, rand=lambda: 1) == 45.0


def test_negative_attempt_is_an_error():
    with pytest.raises(ValueError):
        backoff_delay(-1, 1.0, 60.0)


# -- RepeatLimiter -----------------------------------------------------------

def test_first_message_logged():
    limiter = RepeatLimiter(interval=300)
    assert limiter.check('cannot connect', now=1000.0) == 'cannot connect'


def test_identical_repeats_suppressed_within_interval():
    limiter = RepeatLimiter(interval=300)
    assert limiter.check('cannot connect', 1000.0) == 'cannot connect'
    for t in (1001.0, 1100.0, 1299.9):
        assert limiter.check('cannot connect', t) is None


def test_logged_again_after_interval_with_count():
    limiter = RepeatLimiter(interval=300)
    limiter.check('cannot connect', 1000.0)
    limiter.check('cannot connect', 1010.0)
    limiter.check('cannot connect', 1020.0)
    limiter.check('cannot connect', 1030.0)
    assert limiter.check('cannot connect', 1300.0) == \
        'cannot connect (repeated 3 times)'
    # The count starts over, as does the interval.
    assert limiter.check('cannot connect', 1301.0) is None
    assert limiter.check('cannot connect', 1599.0) is None
    assert limiter.check('cannot connect', 1600.0) == \
        'cannot connect (repeated 2 times)'


def test_after_interval_without_repeats_no_count():
    limiter = RepeatLimiter(interval=300)
    limiter.check('cannot connect', 1000.0)
    assert limiter.check('cannot connect', 2000.0) == 'cannot connect'


def test_different_message_logged_at_once():
    limiter = RepeatLimiter(interval=300)
    assert limiter.check('cannot connect: refused', 1000.0) is not None
    assert limiter.check('cannot connect: refused', 1001.0) is None
    assert limiter.check('cannot connect: timeout', 1002.0) == \
        'cannot connect: timeout'
    assert limiter.check('cannot connect: timeout', 1003.0) is None
    # Back to the first one: different from the last, so logged at once.
    assert limiter.check('cannot connect: refused', 1004.0) == \
        'cannot connect: refused'


def test_reset_forgets_the_last_message():
    limiter = RepeatLimiter(interval=300)
    limiter.check('cannot connect', 1000.0)
    limiter.check('cannot connect', 1001.0)
    limiter.reset()
    assert limiter.check('cannot connect', 1002.0) == 'cannot connect'
