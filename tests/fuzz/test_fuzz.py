"""A short run of the protocol fuzzer, scripts/fuzz.py.

Both directions against real zrsd processes (a replica fed by a scripted
fake primary; a primary with a real replica attached, attacked by hostile
secondaries), and the in-process layer over a real FileStorage.  The
invariants and the way cases are built are described in the fuzzer's
docstring; here each run must come out clean.  The long run is
``scripts/fuzz.py --cases 1000 --in-process``.
"""
import importlib.util
import os

import support

SEED = '20240611'


def _load_fuzzer():
    path = os.path.join(support.ROOT, 'scripts', 'fuzz.py')
    spec = importlib.util.spec_from_file_location('zrsd_fuzz', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzzer()


def run(tmp_path, **kw):
    summary = fuzz.run(seed=SEED, workdir=str(tmp_path), **kw)
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
