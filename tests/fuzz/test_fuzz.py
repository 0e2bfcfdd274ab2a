"""Runs of the protocol fuzzer (this package; see its docstring).

Both directions against real zrsd processes (a replica fed by a scripted
fake primary; a primary with a real replica attached, attacked by hostile
secondaries), and the in-process layer over a real FileStorage; each run
must come out clean.  The short runs are part of ``make test``; the long
one, ``pytest -m long``, is what ``scripts/fuzz.py --cases 1000`` runs.
"""
import pytest

from fuzz import run as fuzzer

SEED = '20240611'


def run(tmp_path, seed=SEED, **kw):
    summary = fuzzer.run(seed=seed, workdir=str(tmp_path), **kw)
    print(summary.report())
    return summary


def test_secondary_side(tmp_path):
    summary = run(tmp_path, cases=30, sides=('secondary',))
    assert summary.get('secondary', 'cases') == 30, summary.report()
    assert summary.get('secondary', 'rejected') > 0, summary.report()
    assert summary.clean, summary.report()


def test_primary_side(tmp_path):
    summary = run(tmp_path, cases=30, sides=('primary',))
    assert summary.get('primary', 'cases') == 30, summary.report()
    assert summary.get('primary', 'followed') == 3, summary.report()
    assert summary.clean, summary.report()


def test_in_process(tmp_path):
    summary = run(tmp_path, cases=0, sides=(), in_process_cases=2500)
    assert summary.get('in-process', 'cases') == 5000, summary.report()
    assert summary.clean, summary.report()


def test_oracle_notices_unchecked_commits(tmp_path):
    """Control for the oracle: a receiver that does not compare checksums
    commits corrupted transactions, and the fuzzer says so."""
    summary = run(tmp_path, cases=0, sides=(), in_process_cases=300,
                  check_checksums=False)
    assert summary.count('partial/unchecked transactions') > 0, \
        summary.report()


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_long(tmp_path):
    """The long run `make torture` ran: ``scripts/fuzz.py --cases 1000``
    (both sides, seed 1)."""
    summary = run(tmp_path, seed='1', cases=1000)
    assert summary.get('secondary', 'cases') == 1000, summary.report()
    assert summary.get('primary', 'cases') == 1000, summary.report()
    assert summary.clean, summary.report()
