"""Runs of the protocol fuzzer (this package; see its docstring): each
must come out clean.  The short runs are part of ``make test``; the long
ones (``pytest -m long``) are ``scripts/fuzz.py``'s."""
import random
from contextlib import closing
from types import SimpleNamespace

import pytest

from fuzz import run as fuzzer
from fuzz.copy_cases import CopyCases, CopySource
from fuzz.copy_side import CopyInProcessLane
from fuzz.source import build_source
from harness.process import stop_all
from harness.zrsd_nodes import blob_db, blob_files, commit_blobs, undo_last
from zrsd import seedprotocol as seed

SEED = '20240611'


def run(tmp_path, counts=(), seed=SEED, clean=True, cases=0, sides=(),
        **kw):
    """Run the fuzzer (no process side unless `sides`): each (side,
    counter, value) of `counts` must hold, and the run must be `clean`."""
    summary = fuzzer.run(cases, seed, sides, workdir=str(tmp_path), **kw)
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


def test_oracle_notices_unchecked_commits(tmp_path):
    """Control for the oracle: a receiver that does not compare checksums
    commits corrupted transactions, and the fuzzer says so."""
    summary = run(tmp_path, in_process_cases=300, check_checksums=False,
                  clean=False)
    assert summary.count('partial/unchecked transactions') > 0, \
        summary.report()


def long_run(timeout):
    return [pytest.mark.long, pytest.mark.timeout(timeout)]


@pytest.mark.parametrize('counts, options', [
    pytest.param([('primary', 'cases', 30), ('primary', 'followed', 3)],
                 dict(cases=30, sides=('primary',)), id='primary_side'),
    pytest.param([('in-process', 'cases', 5000)],
                 dict(in_process_cases=2500), id='in_process'),
    # The copy lanes (a new replica copies its primary's file, zrsd-seed1):
    # real replicas and many in-process copies (plain lane).
    pytest.param([('copy', 'cases', 1), ('copy-in-process', 'cases', 150)],
                 dict(copy_cases=1, copy_in_process_cases=150,
                      copy_lanes=('plain',)), id='copy_side'),
    pytest.param([('copy-in-process', 'cases', 100)],
                 dict(copy_in_process_cases=100, copy_lanes=('blobs',)),
                 id='copy_side_blobs'),
    # The long runs: ``scripts/fuzz.py --cases 1000`` (both sides, seed 1),
    # and ``scripts/fuzz.py --side none --copy-cases 100
    # --copy-in-process-cases 3000 --copy-lanes LANE``.
    pytest.param([('secondary', 'cases', 1000), ('primary', 'cases', 1000)],
                 dict(seed='1', cases=1000, sides=('secondary', 'primary')),
                 id='long', marks=long_run(1800))] + [
    pytest.param([('copy', 'cases', 100), ('copy-in-process', 'cases', 3000)],
                 dict(seed='1', copy_cases=100, copy_in_process_cases=3000,
                      copy_lanes=(lane,)),
                 id='copy_long_' + lane, marks=long_run(3600))
    for lane in ('plain', 'blobs')])
def test_run(tmp_path, counts, options):
    run(tmp_path, counts, **options)


def test_copy_undone_blob_change(tmp_path, node):
    """An undo of a blob change is a record with a back pointer and a blob
    file: the replica copies both (the fuzz source has such undos; a
    scanner that listed only records with data refused the blob file and
    kept the transaction without it)."""
    primary = node('primary', blobs=True).start()
    with closing(blob_db(primary, tmp_path / 'cache')) as db:
        commit_blobs(db, {'b': b'first'}, 'one')
        commit_blobs(db, {'b': b'second'}, 'two')
        last = undo_last(db)
    replica = node('replica', upstream=primary.repl_port, blobs=True,
                   copy_file='new', zrs_lines='  copy-file-minimum 0\n')
    replica.start().wait_for_tid(last)
    stop_all(replica, primary)
    assert blob_files(replica.blob_dir) == blob_files(primary.blob_dir)
    assert 'replicating the rest with ZRS' not in replica.log()


def test_copy_refused_blob_keeps_no_transaction(tmp_path):
    """A `B` of another oid (or tid) in place of the transaction's own is
    refused, and the transaction is not kept (the copy once counted a
    transaction before checking its blob files, and kept it without its
    blob file); no blob file stays in the blob directory's tmp/."""
    source = build_source(str(tmp_path), 'bug', 12, blobs=True)
    cases = CopyCases(CopySource(source), 'bug', SEED, str(tmp_path))
    valid = cases.cs.frames(random.Random(1))
    frames = [p for p, _ in valid]
    first = next(i for i, p in enumerate(frames) if p[:1] == b'B')
    _, tid, size = seed._BLOB.unpack(frames[first][1:])
    frames[first] = seed.blob_header(b'\xff' * 8, tid, size)  # not its oid
    case = cases.make(0, 'blob-oid', valid, frames, cases.cs.data)
    assert case.expected == cases.cs.start(valid[first][1])
    summary = fuzzer.Summary(str(tmp_path), SEED, 1)
    CopyInProcessLane(SimpleNamespace(cs=cases.cs, case=lambda n: case),
                      str(tmp_path), summary).run(1)
    assert summary.clean, summary.report()
