"""zrsd.network.retry: backoff delays and the repeated-log limiter."""
import random

import pytest

from zrsd.network.retry import RepeatLimiter, backoff_delay

# rand() for the longest delay (no jitter) and the shortest (full jitter)
LONGEST, SHORTEST = (lambda: 0), (lambda: 1)
C = 'cannot connect'


@pytest.mark.parametrize('floor, cap, expected', [
    (1.0, 60.0, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]),
    (0.5, 3.0, [0.5, 1.0, 2.0, 3.0, 3.0]),
], ids=['doubles-from-floor-to-cap', 'fractional-floor'])
def test_backoff_without_jitter(floor, cap, expected):
    assert [backoff_delay(n, floor, cap, rand=LONGEST)
            for n in range(len(expected))] == expected


def test_full_jitter_shortens_by_at_most_the_fraction():
    for n in range(10):
        plain = backoff_delay(n, 1.0, 60.0, rand=LONGEST)
        shortened = backoff_delay(n, 1.0, 60.0, jitter=0.25, rand=SHORTEST)
        assert shortened == max(1.0, plain * 0.75) and shortened <= plain


def test_jitter_never_goes_below_floor():
    # With full jitter the first delay would be 0.5 * floor: the floor wins.
    for jitter in (0.5, 1.0):
        assert backoff_delay(0, 2.0, 60.0, jitter, rand=SHORTEST) == 2.0


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
        assert backoff_delay(n, 1.0, 60.0, rand=SHORTEST) \
            > backoff_delay(n - 1, 1.0, 60.0, rand=LONGEST)


@pytest.mark.parametrize('attempt', [64, 65, 1000, 10 ** 6, 10 ** 100])
def test_huge_attempt_numbers(attempt):
    assert backoff_delay(attempt, 1.0, 60.0, rand=LONGEST) == 60.0
    assert backoff_delay(attempt, 1.0, 60.0, rand=SHORTEST) == 45.0


def test_negative_attempt_is_an_error():
    with pytest.raises(ValueError):
        backoff_delay(-1, 1.0, 60.0)


@pytest.mark.parametrize('messages, times, expected', [
    ([C], [1000], [C]),
    ([C] * 4, [1000, 1001, 1100, 1299.9], [C, None, None, None]),
    # Logged again after the interval, with a count; both start over.
    ([C] * 8, [1000, 1010, 1020, 1030, 1300, 1301, 1599, 1600],
     [C, None, None, None, C + ' (repeated 3 times)', None, None,
      C + ' (repeated 2 times)']),
    ([C] * 2, [1000, 2000], [C, C]),
    # A message different from the last one is logged at once.
    ([C + ': refused'] * 2 + [C + ': timeout'] * 2 + [C + ': refused'],
     [1000, 1001, 1002, 1003, 1004],
     [C + ': refused', None, C + ': timeout', None, C + ': refused']),
], ids=['first-message-logged', 'identical-repeats-suppressed',
        'logged-again-after-interval-with-count',
        'after-interval-without-repeats-no-count',
        'different-message-logged-at-once'])
def test_repeat_limiter(messages, times, expected):
    limiter = RepeatLimiter(interval=300)
    assert [limiter.check(m, float(t)) for m, t in zip(messages, times)] \
        == expected


def test_reset_forgets_the_last_message():
    limiter = RepeatLimiter(interval=300)
    limiter.check(C, 1000.0)
    limiter.check(C, 1001.0)
    limiter.reset()
    assert limiter.check(C, 1002.0) == C
