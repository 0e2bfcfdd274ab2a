"""The crash-state checker (see the package docstring): a short run here,
at least 10,000 states in `make torture`."""
import random

import pytest

from fuzz.source import build_source

from .judge import check, record


def run(tmp_path, transactions, per_point, every, seed=20261201):
    source = build_source(str(tmp_path / 'source'), 'source', transactions,
                          blobs=True).txns
    ops = record(str(tmp_path / 'replica'), source, seed)
    kinds = {op[0] for op in ops}
    assert {'write', 'fsync', 'rename', 'create', 'mkdir',
            'publish'} <= kinds, kinds
    return check(ops, source, str(tmp_path / 'scratch'),
                 random.Random(seed), per_point, every)


def report(capsys, text):
    with capsys.disabled():
        print('\n' + text)


def test_crash_states_short(tmp_path, capsys):
    checked, violations = run(tmp_path, 20, per_point=4, every=3)
    report(capsys, 'crash states checked: %d, violations: %d'
           % (checked, len(violations)))
    assert violations == []


@pytest.mark.long
def test_crash_states_long(tmp_path, capsys):
    checked, violations = run(tmp_path, 40, per_point=25, every=1)
    report(capsys, 'crash states checked: %d, violations: %d'
           % (checked, len(violations)))
    assert checked >= 10000
    assert violations == [], violations[:20]
