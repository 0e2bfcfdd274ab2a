"""The crash-state checker: a short run, and at least 10,000 states."""
import random

import pytest

from fuzz.source import build_source

from .judge import check, record

SEED = 20261201


@pytest.mark.parametrize('transactions, per_point, every, least', [
    pytest.param(20, 4, 3, 0, id='short'),
    pytest.param(40, 25, 1, 10000, id='long', marks=pytest.mark.long)])
def test_crash_states(tmp_path, capsys, transactions, per_point, every,
                      least):
    """Record a workload, judge `per_point` crash states at every
    `every`-th operation: `least` of them at least, no violation."""
    source = build_source(str(tmp_path / 'source'), 'source', transactions,
                          blobs=True).txns
    ops = record(str(tmp_path / 'replica'), source, SEED)
    kinds = {op[0] for op in ops}
    assert {'write', 'fsync', 'rename', 'create', 'mkdir',
            'publish'} <= kinds, kinds
    checked, violations = check(ops, source, str(tmp_path / 'scratch'),
                                random.Random(SEED), per_point, every)
    with capsys.disabled():
        print('\ncrash states checked: %d, violations: %d'
              % (checked, len(violations)))
    assert checked >= least
    assert violations == [], violations[:20]
