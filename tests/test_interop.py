"""Interoperability with zc.zrs 3.1.0 (its own venv: see `peers`) in both
roles; files are compared record by record at the end."""
import random
from contextlib import closing

import pytest

from harness import peers, zczrs
from harness.history import assert_same_history, transactions
from harness.process import stop_all, wait_until
from harness.zrsd_nodes import (blob_db, blob_files, commit_blobs,
                                current_blobs, undo_last)


@pytest.fixture
def start_secondary(tmp_path, processes):
    """start_secondary(primary): a started zc.zrs secondary (in its
    ZODB 5.5.1 venv, built on first use) of a zrsd primary."""
    python = peers.peer_python()
    return lambda primary: peers.ZcZrsSecondary(
        tmp_path / 'secondary', primary.repl_port,
        register=processes).start(python)


def test_zczrs_secondary_of_zrsd_primary(start_secondary, node):
    """A zc.zrs secondary follows a zrsd primary through catch-up and live
    commits and ends identical, on one connection."""
    primary = node('primary').start()
    before = zczrs.populate(primary.zeo_address, transactions=150,
                            seed=1, undo_every=60)
    secondary = start_secondary(primary)
    after = zczrs.populate(primary.zeo_address, transactions=150,
                           seed=2, undo_every=50)
    assert before.undos and after.undos and after.creation_undos
    assert primary.last_tid() == after.last_tid
    secondary.wait_for_tid(after.last_tid)
    stop_all(secondary, primary)
    count = assert_same_history(primary.fs_path, secondary.fs_path)
    assert count == before.transactions + after.transactions + 1  # + root
    log = primary.log()
    assert log.count('streaming transactions after 0000000000000000 '
                     '(zrs2.0)') == 1, log
    assert ' ERROR ' not in log, log
    secondary_log = secondary.log()
    assert 'Traceback' not in secondary_log, secondary_log
    assert secondary_log.count(': Connected') == 1, secondary_log
    print('\nzrsd primary -> zc.zrs secondary: %d transactions identical'
          % count)


def test_zczrs_secondary_refused_by_zrsd_primary(start_secondary, node):
    """A zc.zrs secondary holding another database's history is refused,
    its file left as it was."""
    a = node('a').start()
    last = a.commit('in-a', 1)
    secondary = start_secondary(a)
    secondary.wait_for_tid(last)
    secondary.stop()
    history = transactions(secondary.fs_path)
    # Another database, created later: all of its tids are newer.
    b = node('b').start()
    b.commit('in-b', 1)
    secondary.primary_port = b.repl_port
    secondary.start(secondary.python)
    # zc.zrs retries every second: refused at least twice, one ERROR.
    wait_until(lambda: b.log().count('secondary refused') >= 2, 60,
               message='the zrsd primary refuses the zc.zrs secondary twice')
    (error,) = [line for line in b.log().splitlines() if ' ERROR ' in line]
    assert 'its last transaction %s is not in this storage' % last.hex() \
        in error, error
    assert secondary.last_tid() == last
    stop_all(secondary, b, a)
    assert transactions(secondary.fs_path) == history


# Empty, tiny, around the 65536-byte blocks of 'B' messages, several blocks.
BLOB_SIZES = [0, 1, 1000, 65535, 65536, 65537, 200000]


def test_zrsd_replica_of_zczrs_blob_primary(tmp_path, node, processes):
    """A zrsd replica of a zc.zrs primary with blobs (zrs2.1), blobs
    written before and after it connects: all identical."""
    rng = random.Random(2.1)
    primary = zczrs.ZcZrsPrimary(tmp_path / 'primary', blobs=True,
                                 register=processes).start()
    zrsd = node('replica', upstream=primary.repl_port, blobs=True)
    expected = {'blob-%d' % key: rng.randbytes(size)
                for key, size in enumerate(BLOB_SIZES)}
    with closing(blob_db(primary, tmp_path / 'writer')) as db:
        for key, (name, data) in enumerate(expected.items()):
            if key == 4:
                zrsd.start()
            commit_blobs(db, {name: data}, 'blob %d' % key,
                         **{'blob-size': len(data)})
        expected['blob-2'] = rng.randbytes(150000)
        commit_blobs(db, {'blob-2': expected['blob-2']}, 'change blob 2')
        commit_blobs(db, {'blob-5': b'this change is undone'}, 'undone')
        last = undo_last(db)
    assert primary.last_tid() == last
    zrsd.wait_for_tid(last)
    for each in (primary, zrsd):
        with closing(blob_db(each, tmp_path / ('reader-' + each.name),
                             read_only=True)) as db:
            assert current_blobs(db, expected) == expected, each.name
    stop_all(zrsd, primary)
    count = assert_same_history(primary.fs_path, zrsd.fs_path)
    files = blob_files(primary.blob_dir)
    assert blob_files(zrsd.blob_dir) == files
    # 7 blobs, 2 changes, the undo's copy of the restored revision.
    assert len([p for p in files if p.endswith('.blob')]) == 10, files
    assert 'connected (zrs2.1)' in zrsd.log()
    print('\nzc.zrs blob primary -> zrsd: %d transactions, %d blob files '
          'identical' % (count, len(files)))
