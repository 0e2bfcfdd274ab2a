"""The crash-state checker: a short run, and at least 10,000 states."""
import random

import pytest

from fuzz.source import build_source

from .judge import check, record


def run(tmp_path, capsys, transactions, per_point, every, seed=20261201):
    """Record and judge a workload; (states checked, violations)."""
    source = build_source(str(tmp_path / 'source'), 'source', transactions,
                          blobs=True).txns
    ops = record(str(tmp_path / 'replica'), source, seed)
    kinds = {op[0] for op in ops}
    assert {'write', 'fsync', 'rename', 'create', 'mkdir',
            'publish'} <= kinds, kinds
    checked, violations = check(ops, source, str(tmp_path / 'scratch'),
                                random.Random(seed), per_point, every)
    with capsys.disabled():
        print('\ncrash states checked: %d, violations: %d'
              % (checked, len(violations)))
    return checked, violations


def test_crash_states_short(tmp_path, capsys):
    assert run(tmp_path, capsys, 20, per_point=4, every=3)[1] == []


@pytest.mark.long
def test_crash_states_long(tmp_path, capsys):
    checked, violations = run(tmp_path, capsys, 40, per_point=25, every=1)
    assert checked >= 10000
    assert violations == [], violations[:20]
