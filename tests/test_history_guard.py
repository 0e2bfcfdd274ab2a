"""The history guard's rule, on real FileStorage files (no network).

`TidIndex.start_position` decides where a secondary starts: zero or a tid
of the file is accepted; a tid missing from the file is accepted (with a
note, logged as a WARNING) only inside the packed part of the file, where a
pack may have removed it; any other tid raises HistoryMismatch.
"""
import time

import pytest
import transaction
import ZODB
import ZODB.FileStorage
from persistent.mapping import PersistentMapping
from ZODB.utils import p64, u64, z64

from zrsd.primary.history import (CommittedFile, HistoryMismatch,
                                  TidIndex)


def between(a, b):
    tid = p64(u64(a) + 1)
    assert a < tid < b
    return tid


@pytest.fixture
def packed(tmp_path):
    """A FileStorage whose early history was packed.

    Transactions: the root's creation and `garbage` (both only wrote
    records that later ones replaced or made unreachable: packed away),
    `kept`, then a pack, then `after` and `last` (unpacked).  Returns
    (storage, {name: tid}).
    """
    path = str(tmp_path / 'Data.fs')
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path))
    tids = {}
    with db.transaction() as conn:
        conn.root()['doomed'] = PersistentMapping()
    tids['root'] = db.storage.lastTransaction()
    with db.transaction() as conn:
        conn.root()['doomed']['x'] = 1
    tids['garbage'] = db.storage.lastTransaction()
    with db.transaction() as conn:
        del conn.root()['doomed']
        conn.root()['kept'] = PersistentMapping()
    tids['kept'] = db.storage.lastTransaction()
    # Pack past `kept`: `garbage` only wrote an unreachable object.
    while time.time() <= ZODB.TimeStamp.TimeStamp(tids['kept']).timeTime():
        time.sleep(0.01)
    db.pack(time.time())
    with db.transaction() as conn:
        conn.root()['kept']['y'] = 2
    tids['after'] = db.storage.lastTransaction()
    with db.transaction() as conn:
        conn.root()['kept']['y'] = 3
    tids['last'] = db.storage.lastTransaction()
    transaction.abort()
    yield db.storage, tids
    db.close()


def start(fs, tid):
    reader = CommittedFile(fs)
    try:
        end, _ = reader.committed_end()
        return TidIndex().start_position(reader, tid, end)
    finally:
        reader.close()


def statuses(fs):
    return {txn.tid: txn.status for txn in fs.iterator()}


def test_fixture_history_is_packed_as_expected(packed):
    fs, tids = packed
    found = statuses(fs)
    assert tids['root'] not in found and tids['garbage'] not in found
    assert found[tids['kept']] == 'p'
    assert found[tids['after']] == ' '


def test_zero_and_known_tids_are_accepted_silently(packed):
    fs, tids = packed
    assert start(fs, z64) == (4, None)
    for name in ('kept', 'after', 'last'):
        position, note = start(fs, tids[name])
        assert note is None, name
    assert start(fs, tids['last'])[0] == fs.getSize()


def test_tid_packed_away_is_accepted_with_a_note(packed):
    fs, tids = packed
    position, note = start(fs, tids['garbage'])
    assert note == ('%s is not in this storage, but lies in its packed part '
                    '(nothing before it, the one after it %s), where a pack '
                    'may have removed it' % (tids['garbage'].hex(),
                                             tids['kept'].hex()))
    assert position == 4  # resumes at `kept`
    assert 'packed part' in start(fs, tids['root'])[1]
    # Between `kept` (status 'p') and `after`: inside the packed part too.
    assert 'packed part' in start(fs, between(tids['kept'],
                                              tids['after']))[1]


def test_unknown_tid_after_the_packed_part_is_refused(packed):
    fs, tids = packed
    forked = between(tids['after'], tids['last'])
    with pytest.raises(HistoryMismatch) as info:
        start(fs, forked)
    assert ('its last transaction %s is not in this storage (the transaction '
            'before it is %s, the one after it %s)' % (
                forked.hex(), tids['after'].hex(), tids['last'].hex())
            == str(info.value))


def test_tid_after_the_last_is_refused(packed):
    fs, tids = packed
    with pytest.raises(HistoryMismatch) as info:
        start(fs, p64(u64(tids['last']) + 1))
    assert 'that is the last transaction here' in str(info.value)


def test_unpacked_file_refuses_a_tid_before_its_first(tmp_path):
    db = ZODB.DB(ZODB.FileStorage.FileStorage(str(tmp_path / 'Data.fs')))
    try:
        first = db.storage.lastTransaction()
        with pytest.raises(HistoryMismatch) as info:
            start(db.storage, p64(u64(first) - 1))
        assert 'nothing before it, the one after it %s' % first.hex() in str(
            info.value)
    finally:
        db.close()
