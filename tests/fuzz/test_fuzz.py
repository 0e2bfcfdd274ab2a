"""Runs of the protocol fuzzer (this package; see its docstring).

Each run must come out clean.  The short runs are part of ``make test``;
the long one, ``pytest -m long``, is what ``scripts/fuzz.py --cases 1000``
runs.
"""
import pytest

from fuzz import run as fuzzer

SEED = '20240611'


def run(tmp_path, counts=(), seed=SEED, clean=True, **kw):
    """Run the fuzzer: each (side, counter, value) of `counts` must hold,
    and the run must be `clean`."""
    summary = fuzzer.run(seed=seed, workdir=str(tmp_path), **kw)
    report = summary.report()
    print(report)
    for side, key, value in counts:
        assert summary.get(side, key) == value, report
    assert summary.clean or not clean, report
    return summary


def test_secondary_side(tmp_path):
    summary = run(tmp_path, [('secondary', 'cases', 30)], cases=30,
                  sides=('secondary',))
    assert summary.get('secondary', 'rejected') > 0, summary.report()


def test_primary_side(tmp_path):
    run(tmp_path, [('primary', 'cases', 30), ('primary', 'followed', 3)],
        cases=30, sides=('primary',))


def test_in_process(tmp_path):
    run(tmp_path, [('in-process', 'cases', 5000)], cases=0, sides=(),
        in_process_cases=2500)


def test_oracle_notices_unchecked_commits(tmp_path):
    """Control for the oracle: a receiver that does not compare checksums
    commits corrupted transactions, and the fuzzer says so."""
    summary = run(tmp_path, cases=0, sides=(), in_process_cases=300,
                  check_checksums=False, clean=False)
    assert summary.count('partial/unchecked transactions') > 0, \
        summary.report()


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_long(tmp_path):
    """``scripts/fuzz.py --cases 1000`` (both sides, seed 1)."""
    run(tmp_path, [('secondary', 'cases', 1000), ('primary', 'cases', 1000)],
        seed='1', cases=1000)
