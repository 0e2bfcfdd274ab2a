"""The history guard on real files: `TidIndex.start_position` accepts zero,
a tid of the file or of its packed part (a note), else HistoryMismatch."""
import time
from contextlib import closing

import pytest
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.utils import p64, u64, z64

from zrsd.primary.history import CommittedFile, HistoryMismatch, TidIndex

from harness.process import wait_until


def after(tid, n=1, before=None):
    """`tid` + n, which must lie before `before` (if given)."""
    tid = p64(u64(tid) + n)
    assert before is None or tid < before
    return tid


@pytest.fixture
def packed(tmp_path):
    """(storage, {name: tid}): `root`, `garbage` (packed away), `kept`, a
    pack, `after`, `last`."""
    db = ZODB.DB(str(tmp_path / 'Data.fs'))
    tids = {}
    for name, change in [
            ('root', lambda r: r.update(doomed=PersistentMapping())),
            ('garbage', lambda r: r['doomed'].update(x=1)),
            ('kept', lambda r: (r.pop('doomed'),
                                r.update(kept=PersistentMapping()))),
            ('after', lambda r: r['kept'].update(y=2)),
            ('last', lambda r: r['kept'].update(y=3))]:
        if name == 'after':  # pack past `kept`
            kept = ZODB.TimeStamp.TimeStamp(tids['kept']).timeTime()
            wait_until(lambda: time.time() > kept, interval=0.01)
            db.pack(time.time())
        with db.transaction() as conn:
            change(conn.root())
        tids[name] = db.storage.lastTransaction()
    yield db.storage, tids
    db.close()


def start(fs, tid):
    with closing(CommittedFile(fs)) as reader:
        end = reader.committed_end()[0]
        return TidIndex().start_position(reader, tid, end)


def test_fixture_history_is_packed_as_expected(packed):
    fs, tids = packed
    found = {txn.tid: txn.status for txn in fs.iterator()}
    assert tids['root'] not in found and tids['garbage'] not in found
    assert (found[tids['kept']], found[tids['after']]) == ('p', ' ')


def test_zero_and_known_tids_are_accepted_silently(packed):
    fs, tids = packed
    assert start(fs, z64) == (4, None)
    for name in ('kept', 'after', 'last'):
        assert start(fs, tids[name])[1] is None, name
    assert start(fs, tids['last'])[0] == fs.getSize()


def test_tid_packed_away_is_accepted_with_a_note(packed):
    fs, tids = packed
    assert start(fs, tids['garbage']) == (4, (  # resumes at `kept`
        '%s is not in this storage, but lies in its packed part (nothing '
        'before it, the one after it %s), where a pack may have removed it'
        % (tids['garbage'].hex(), tids['kept'].hex())))
    assert 'packed part' in start(fs, tids['root'])[1]
    # Between `kept` (status 'p') and `after`: inside the packed part too.
    inside = after(tids['kept'], before=tids['after'])
    assert 'packed part' in start(fs, inside)[1]


def test_unknown_tid_after_the_packed_part_is_refused(packed):
    fs, tids = packed
    forked = after(tids['after'], before=tids['last'])
    with pytest.raises(HistoryMismatch) as info:
        start(fs, forked)
    assert ('its last transaction %s is not in this storage (the transaction '
            'before it is %s, the one after it %s)' % (
                forked.hex(), tids['after'].hex(), tids['last'].hex())
            == str(info.value))


def test_tid_after_the_last_is_refused(packed):
    fs, tids = packed
    with pytest.raises(HistoryMismatch,
                       match='that is the last transaction here'):
        start(fs, after(tids['last']))


def test_unpacked_file_refuses_a_tid_before_its_first(tmp_path):
    with closing(ZODB.DB(str(tmp_path / 'Data.fs'))) as db:
        first = db.storage.lastTransaction()
        with pytest.raises(HistoryMismatch, match='nothing before it, the '
                           'one after it %s' % first.hex()):
            start(db.storage, after(first, -1))
