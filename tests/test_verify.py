"""`zrsd-verify`, the online history comparison, run as a command.

The servers are real: a zrsd primary (`harness.zrsd_nodes.ZrsdNode`) and zrsd
replicas replicating from it, all on 127.0.0.1, holding a `populate()`
history (undos, undone creations, extension data).  `zrsd-verify` runs as
a process against their ZEO ports and their files while they run.

Divergent histories are FileStorages written here transaction by
transaction from the primary's history (the way `copyTransactionsFrom`
does, with `restore`), with one change; an unchanged rewrite is the
control that the writer itself is faithful.
"""
import base64
import os
import re
import shutil
import subprocess
import threading

import pytest
import transaction
import ZEO
import ZODB
from persistent.mapping import PersistentMapping
from ZODB.Connection import TransactionMetaData
from ZODB.FileStorage import FileStorage
from ZODB.TimeStamp import TimeStamp
from ZODB.fsIndex import fsIndex
from ZODB.serialize import referencesf
from ZODB.utils import p64, u64

from harness import zczrs
from harness.history import pack_stop_tid, transactions
from harness.process import BIN, free_port, wait_until
from harness.zrsd_nodes import ZrsdNode

VERIFY = os.path.join(BIN, 'zrsd-verify')


def verify(*args):
    """Run zrsd-verify; (exit status, stdout, stderr)."""
    done = subprocess.run([VERIFY] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=120)
    return (done.returncode, done.stdout.decode('utf-8'),
            done.stderr.decode('utf-8'))


def zeo(port):
    return '127.0.0.1:%d' % port


def tids(fs_path):
    """Every tid in a FileStorage file (opened read-only)."""
    fs = FileStorage(fs_path, read_only=True)
    try:
        return [txn.tid for txn in fs.iterator()]
    finally:
        fs.close()


def tid_text(tid):
    return '%s (%s UTC)' % (tid.hex(), TimeStamp(tid))


def commit_many(address, count, key):
    """`count` transactions on a ZEO server; returns their tids."""
    db = ZEO.DB(address)
    tm = transaction.TransactionManager()
    conn = db.open(tm)
    result = []
    try:
        for i in range(count):
            tm.begin()
            conn.root()[key] = i
            tm.get().note('zrsd-verify test: %s %d' % (key, i))
            tm.commit()
            result.append(conn.root()._p_serial)
    finally:
        tm.abort()
        conn.close()
        db.close()
    return result


class Pair:
    """A running zrsd primary and a zrsd replica following it."""

    def __init__(self, directory):
        self.primary = ZrsdNode(directory, 'primary')
        self.replica = ZrsdNode(directory, 'replica',
                                upstream=self.primary.repl_port)

    def start(self):
        self.primary.start()
        self.populated = zczrs.populate(self.primary.zeo_address,
                                        transactions=300, undo_every=50)
        assert self.populated.undos and self.populated.creation_undos
        self.replica.start()
        self.wait_caught_up()
        return self

    def wait_caught_up(self):
        """Wait until the replica holds the primary's last transaction."""
        target = self.primary.last_tid()
        wait_until(lambda: self.replica.last_tid() == target,
                   message='replica at %s' % target.hex())
        return target

    def close(self):
        self.replica.close()
        self.primary.close()


@pytest.fixture(scope='module')
def pair(request, tmp_path_factory):
    """The running primary and replica shared by the module's tests; their
    log tails are printed at the end if a test failed."""
    pair = Pair(tmp_path_factory.mktemp('verify'))
    failed = request.session.testsfailed
    try:
        yield pair.start()
    finally:
        pair.close()
        if request.session.testsfailed > failed:
            for proc in (pair.primary.process, pair.replica.process):
                if proc is not None:
                    lines = proc.log().splitlines()[-60:]
                    print('\n==== last %d lines of %s ====\n%s' % (
                        len(lines), proc.log_path, '\n'.join(lines)))


# -- live servers ---------------------------------------------------------

def test_both_zeo_agree(pair):
    """Both ZEO ports while both processes run: every transaction up to the
    replica's last one is compared; the replica is up to date."""
    last = pair.wait_caught_up()
    history = [tid for tid in tids(pair.primary.fs_path) if tid <= last]
    status, out, err = verify(zeo(pair.primary.zeo_port),
                              zeo(pair.replica.zeo_port))
    assert (status, err) == (0, ''), out
    assert out.splitlines() == [
        'OK: %d transactions agree, %s to %s' % (
            len(history), tid_text(history[0]), tid_text(history[-1])),
        'replica up to date with the primary',
    ]
    status, out, err = verify('--quiet', zeo(pair.primary.zeo_port),
                              zeo(pair.replica.zeo_port))
    assert (status, out, err) == (0, '', '')


def test_objects_agree(pair):
    """--objects loads every object from both servers; the count is that of
    the objects whose last record has data (undone creations do not
    count)."""
    last = pair.wait_caught_up()
    current = {}
    for txn in transactions(pair.primary.fs_path):
        if txn[0] <= last:
            for oid, _, data, _ in txn[5]:
                current[oid] = data
    objects = sum(1 for data in current.values() if data is not None)
    assert objects < len(current)  # some creations were undone
    status, out, err = verify('--objects', zeo(pair.primary.zeo_port),
                              zeo(pair.replica.zeo_port))
    assert (status, err) == (0, ''), out
    assert 'OK: %d objects agree as of %s' % (objects, tid_text(last)) in out


def test_files_of_running_servers(pair):
    """Each server's file, read while the server has it open, against the
    other server's ZEO port (both mixes; with and without the `fs:` and
    `zeo:` prefixes, and a bare port)."""
    last = pair.wait_caught_up()
    count = len([tid for tid in tids(pair.primary.fs_path) if tid <= last])
    for primary, replica in [
            (pair.primary.fs_path, 'zeo:' + zeo(pair.replica.zeo_port)),
            (str(pair.primary.zeo_port), 'fs:' + pair.replica.fs_path)]:
        status, out, err = verify(primary, replica)
        assert (status, err) == (0, ''), (primary, replica, out)
        assert 'OK: %d transactions agree' % count in out


def test_while_the_primary_commits(pair):
    """Commits on the primary (replicated as they happen) during the
    comparison never show as a divergence.  (The committer stops after
    300 commits, to keep the history, and later tests, short.)"""
    stop = threading.Event()
    committed = []

    def commit():
        db = ZEO.DB(pair.primary.zeo_address)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            while not stop.is_set() and len(committed) < 300:
                tm.begin()
                conn.root()['busy'] = len(committed)
                tm.commit()
                committed.append(conn.root()._p_serial)
        finally:
            tm.abort()
            conn.close()
            db.close()

    committer = threading.Thread(target=commit, name='committer')
    committer.start()
    try:
        wait_until(lambda: len(committed) >= 3, message='first commits')
        status, out, err = verify('--objects', zeo(pair.primary.zeo_port),
                                  zeo(pair.replica.zeo_port))
        assert (status, err) == (0, ''), out + err
        assert 'transactions agree' in out and 'objects agree' in out
    finally:
        stop.set()
        committer.join(60)
    pair.wait_caught_up()


def test_replica_behind(pair, tmp_path, processes):
    """A second replica, stopped, while the primary commits 5 more
    transactions: its file agrees with the primary (ZEO or file), the lag
    is those 5 transactions and the time between the last tids."""
    replica = ZrsdNode(tmp_path, 'behind', upstream=pair.primary.repl_port,
                       register=processes).start()
    fs_path = replica.fs_path
    target = pair.primary.last_tid()
    wait_until(lambda: replica.last_tid() == target,
               message='second replica')
    assert replica.stop() == 0

    more = commit_many(pair.primary.zeo_address, 5, 'behind')
    assert pair.primary.last_tid() == more[-1]
    count = len(tids(fs_path))
    lag = ('replica behind the primary by 5 transactions, %.3f seconds; '
           'primary last transaction %s' % (
               TimeStamp(more[-1]).timeTime() - TimeStamp(target).timeTime(),
               tid_text(more[-1])))
    for primary in [zeo(pair.primary.zeo_port), pair.primary.fs_path]:
        status, out, err = verify(primary, fs_path)
        assert (status, err) == (0, ''), out
        assert out.splitlines() == [
            'OK: %d transactions agree, %s to %s' % (
                count, tid_text(tids(fs_path)[0]), tid_text(target)),
            lag,
        ]
    # Objects are compared as of the replica's last transaction, although
    # the primary has newer revisions of some.
    status, out, err = verify('--objects', zeo(pair.primary.zeo_port),
                              fs_path)
    assert (status, err) == (0, ''), out
    assert 'objects agree as of %s' % tid_text(target) in out


def test_start_tid(pair):
    """--start: the comparison begins at that tid, or the first one after
    it (with or without 0x)."""
    last = pair.wait_caught_up()
    history = [tid for tid in tids(pair.primary.fs_path) if tid <= last]
    start = history[100]
    status, out, err = verify('--start', '0x' + start.hex().upper(),
                              zeo(pair.primary.zeo_port),
                              zeo(pair.replica.zeo_port))
    assert (status, err) == (0, ''), out + err
    assert 'OK: %d transactions agree, %s to' % (
        len(history) - 100, tid_text(start)) in out
    # Without 0x, between two tids: from the next one.
    status, out, err = verify('--start', p64(u64(start) + 1).hex(),
                              pair.primary.fs_path, pair.replica.fs_path)
    assert (status, err) == (0, ''), out + err
    assert 'OK: %d transactions agree, %s to' % (
        len(history) - 101, tid_text(history[101])) in out


# -- divergent histories ----------------------------------------------------

def write_history(path, history):
    """A new FileStorage at `path` holding `history` (`Txn`s of
    `harness.history.transactions`), written with `restore` as replication
    does."""
    fs = FileStorage(path, create=True)
    try:
        for tid, status, user, description, extension, records in history:
            txn = TransactionMetaData(user, description, extension)
            fs.tpc_begin(txn, tid, status)
            for oid, _, data, data_txn in records:
                fs.restore(oid, tid, data, '', data_txn, txn)
            fs.tpc_vote(txn)
            fs.tpc_finish(txn)
    finally:
        fs.close()
    return path


@pytest.fixture(scope='module')
def history(pair, tmp_path_factory):
    """The populated history, and a faithful rewrite of it in a file."""
    last = pair.populated.last_tid
    result = [txn for txn in transactions(pair.primary.fs_path)
              if txn[0] <= last]
    directory = tmp_path_factory.mktemp('histories')
    path = write_history(str(directory / 'original.fs'), result)
    return result, path


def _plain(history, start):
    """Index of the first transaction at or after `start` with user data:
    records with data, none of them a back pointer, none referenced by a
    later record's data_txn (so it can be dropped)."""
    referenced = {record[3] for txn in history for record in txn[5]}
    for index in range(start, len(history)):
        tid, _, _, _, _, records = history[index]
        if (records and tid not in referenced
                and all(r[2] is not None and r[3] is None for r in records)):
            return index
    raise AssertionError('no plain transaction after %d' % start)


def alter(history, how):
    """(altered copy of `history`, index of its first divergence,
    text the report must contain)."""
    history = list(history)
    n = _plain(history, len(history) // 2)
    tid, status, user, description, extension, records = history[n]
    if how == 'data':
        oid, rtid, data, data_txn = records[-1]
        records = records[:-1] + [(oid, rtid, data + b'!', data_txn)]
        history[n] = (tid, status, user, description, extension, records)
        return history, n, 'record %d: oid 0x%016x: data differ' % (
            len(records) - 1, u64(oid))
    if how == 'description':
        history[n] = (tid, status, user, description + b' (edited)',
                      extension, records)
        return history, n, 'description differs'
    if how == 'extension':
        history[n] = (tid, status, user, description,
                      dict(extension, forged=True), records)
        return history, n, 'extension differs'
    if how == 'missing':
        del history[n]
        return history, n, 'transaction missing on the replica'
    if how == 'extra':
        # A transaction of its own between two of the primary's.
        extra = p64(u64(tid) + 1)
        assert extra < history[n + 1][0]
        history.insert(n + 1, (extra, ' ', b'', b'forged', {},
                               [(p64(10 ** 6), extra, b'forged', None)]))
        return history, n + 1, 'transaction on the replica only'
    if how == 'ahead':
        extra = p64(u64(history[-1][0]) + 1)
        history.append((extra, ' ', b'', b'forged', {},
                        [(p64(10 ** 6), extra, b'forged', None)]))
        return history, len(history) - 1, 'transaction on the replica only'
    raise ValueError(how)


def test_rewrite_is_faithful(pair, history):
    """The control: the unchanged rewrite agrees with the primary's file
    and with the running primary."""
    original, path = history
    assert transactions(path) == original
    for primary in [pair.primary.fs_path, zeo(pair.primary.zeo_port)]:
        status, out, err = verify(primary, path)
        assert (status, err) == (0, ''), out
        assert 'OK: %d transactions agree' % len(original) in out


@pytest.mark.parametrize('how', ['data', 'description', 'extension',
                                 'missing', 'extra', 'ahead'])
def test_divergence(history, tmp_path, how):
    """One change in a copy: exit 1, the first divergent tid and what
    differs, the number of transactions that agreed before it."""
    original, path = history
    altered, index, what = alter(original, how)
    replica = write_history(str(tmp_path / 'altered.fs'), altered)
    status, out, err = verify(path, replica)
    assert (status, err) == (1, ''), out
    first, agreed = out.splitlines()
    # A transaction missing from the copy is reported at the primary's tid.
    tid = (original if how == 'missing' else altered)[index][0]
    assert first.startswith('DIVERGED at transaction %s: ' % tid_text(tid))
    assert what in first
    assert agreed == '%d transactions agreed before it' % index
    # --quiet still reports the divergence, on one line.
    status, out, err = verify('-q', path, replica)
    assert (status, out, err) == (1, first + '\n', '')


def test_divergence_against_running_primary(pair, history, tmp_path):
    """The running primary (ZEO) against a diverging file named without
    `.fs` (the `fs:` prefix says it is a file)."""
    original, _ = history
    altered, index, what = alter(original, 'data')
    replica = write_history(str(tmp_path / 'altered.data'), altered)
    status, out, err = verify(zeo(pair.primary.zeo_port), 'fs:' + replica)
    assert (status, err) == (1, ''), out
    assert out.startswith('DIVERGED at transaction %s: %s' % (
        tid_text(original[index][0]), what))


def test_empty_replica(history, tmp_path):
    """An empty replica agrees (nothing to compare) and lags by the whole
    history."""
    original, path = history
    empty = write_history(str(tmp_path / 'empty.fs'), [])
    status, out, err = verify('--objects', path, empty)
    assert (status, err) == (0, ''), out
    assert out.splitlines() == [
        'OK: no transactions to compare',
        'replica behind the primary by %d transactions (the replica is '
        'empty); primary last transaction %s' % (
            len(original), tid_text(original[-1][0])),
        'OK: no objects to compare (the replica is empty)',
    ]


def test_objects_diverge_through_a_bad_index(history, tmp_path):
    """--objects reads through each storage's index: a copy whose `.index`
    sends one object to its previous revision has the same history (exit
    0 without --objects) but loads differently (exit 1, naming the object
    and both serials)."""
    original, path = history
    last_txn_oids = {record[0] for record in original[-1][5]}
    revisions = {}
    for txn in original:
        for oid, tid, data, _ in txn[5]:
            if data is not None and oid not in last_txn_oids:
                revisions.setdefault(oid, []).append(tid)
    oid = next(oid for oid, tids_ in sorted(revisions.items())
               if len(tids_) >= 2)
    tampered = str(tmp_path / 'tampered.fs')
    shutil.copyfile(path, tampered)
    fs = FileStorage(tampered, read_only=True)
    try:
        current = fs._read_data_header(fs._lookup_pos(oid), oid)
        previous = fs._read_data_header(current.prev, oid)
    finally:
        fs.close()
    info = fsIndex.load(path + '.index')
    info['index'][oid] = current.prev
    info['index'].save(info['pos'], tampered + '.index')

    status, out, err = verify(path, tampered)
    assert (status, err) == (0, ''), out
    status, out, err = verify('--objects', path, tampered)
    assert (status, err) == (1, ''), out
    assert ('DIVERGED: object 0x%016x as of %s: primary serial %s, '
            % (u64(oid), tid_text(original[-1][0]), current.tid.hex())
            in out)
    assert '; replica serial %s, ' % previous.tid.hex() in out


# -- packed histories -------------------------------------------------------

@pytest.fixture(scope='module')
def packed(history, tmp_path_factory):
    """The faithful rewrite packed half-way through its history: (its
    transactions, path, index of the first transaction after the pack
    time in the original)."""
    original, path = history
    middle = len(original) // 2
    pack_time = (TimeStamp(original[middle - 1][0]).timeTime()
                 + TimeStamp(original[middle][0]).timeTime()) / 2
    copy = str(tmp_path_factory.mktemp('packed') / 'packed.fs')
    shutil.copyfile(path, copy)
    fs = FileStorage(copy)
    try:
        fs.pack(pack_time, referencesf)
    finally:
        fs.close()
    result = transactions(copy)
    assert [t[1] for t in result].count('p') > 0
    assert len(result) < len(original)
    assert result[-(len(original) - middle):] == original[middle:]
    return result, copy, middle


def test_packed_side_agrees(history, packed):
    """A packed copy against the unpacked original, in both roles: the
    packed part is compared as such, the rest strictly, and the objects
    are compared without --objects (the ones the pack collected are
    counted)."""
    original, path = history
    packed_history, packed_path, middle = packed
    kept = sum(1 for t in packed_history if t[1] == 'p')
    for primary, replica, side in [(path, packed_path, 'replica'),
                                   (packed_path, path, 'primary')]:
        status, out, err = verify(primary, replica)
        assert (status, err) == (0, ''), out
        lines = out.splitlines()
        assert lines[0].startswith('OK: %d transactions agree, ' % (
            len(packed_history)))
        assert lines[1] == ('packed history on the %s: %d transactions '
                            'compared as packed, %d found on one side only'
                            % (side, kept, middle - kept))
        assert lines[3] == ('comparing every object too (--objects), as '
                            'history was packed')
        assert lines[4].startswith('OK: ') and 'objects agree as of' in out


@pytest.mark.parametrize('how', ['packed-data', 'packed-extra-record',
                                 'missing-after-pack', 'packed-user'])
def test_packed_divergence(history, packed, tmp_path, how):
    """What a pack cannot explain is still a divergence: different data in
    a packed transaction, a record a pack could not have kept (the other
    side is not packed there), a transaction missing after the pack time,
    different metadata of a packed transaction."""
    original, _ = history
    packed_history, _, middle = packed
    altered = list(packed_history)
    first_p = next(i for i, t in enumerate(altered) if t[1] == 'p')
    tid, status, user, description, extension, records = altered[first_p]
    if how == 'packed-data':
        oid, rtid, data, data_txn = records[0]
        records = [(oid, rtid, data + b'!', data_txn)] + records[1:]
        what = 'oid 0x%016x: data differ' % u64(oid)
    elif how == 'packed-extra-record':
        records = records + [(p64(10 ** 6), tid, b'forged', None)]
        what = ('oid 0x%016x on the replica only, in a transaction packed '
                'there only' % 10 ** 6)
    elif how == 'packed-user':
        user += b' (edited)'
        what = 'user differs'
    altered[first_p] = (tid, status, user, description, extension, records)
    if how == 'missing-after-pack':
        first_p = len(altered) - (len(original) - middle) + 5
        tid = altered[first_p][0]
        del altered[first_p]
        what = 'transaction missing on the replica'
    replica = write_history(str(tmp_path / 'altered.fs'), altered)
    status, out, err = verify(history[1], replica)
    assert (status, err) == (1, ''), out
    assert out.startswith('DIVERGED at transaction %s: ' % tid_text(tid))
    assert what in out.splitlines()[0]


def test_inline_data_for_a_back_pointer_into_the_packed_part(tmp_path):
    """An undo after the pack time points back to a revision that a
    replica's pack dropped: the replica holds the data inline (as `restore`
    does when the transaction is gone).  That agrees; inline data for a
    back pointer into the unpacked part does not."""
    path = str(tmp_path / 'primary.fs')
    db = ZODB.DB(FileStorage(path))
    with db.transaction() as conn:
        conn.root()['z'] = PersistentMapping(v=0)
    with db.transaction() as conn:
        conn.root()['z']['v'] = 1
    undone = db.lastTransaction()
    for i in range(5):
        with db.transaction() as conn:
            conn.root()['x'] = i
    before = db.lastTransaction()
    with db.transaction() as conn:
        conn.root()['x'] = 'after the pack'
    pack_time = (TimeStamp(before).timeTime()
                 + TimeStamp(db.lastTransaction()).timeTime()) / 2
    db.undo(base64.encodebytes(undone).rstrip())
    transaction.commit()
    db.close()
    original = transactions(path)
    oid, tid, data, back = original[-1][5][0]
    assert back is not None and back < pack_stop_tid(pack_time)

    packed = str(tmp_path / 'packed.fs')
    shutil.copyfile(path, packed)
    fs = FileStorage(packed)
    fs.pack(pack_time, referencesf)
    fs.close()
    inlined = transactions(packed)
    inlined[-1] = inlined[-1][:5] + ([(oid, tid, data, None)],)
    replica = write_history(str(tmp_path / 'inlined.fs'), inlined)
    assert transactions(replica)[-1][5] == [(oid, tid, data, None)]
    status, out, err = verify(path, replica)
    assert (status, err) == (0, ''), out
    assert 'packed history on the replica' in out

    # The same record inline in an unpacked copy: that is a divergence.
    unpacked = original[:-1] + [original[-1][:5] + (
        [(oid, tid, data, None)],)]
    replica = write_history(str(tmp_path / 'unpacked.fs'), unpacked)
    status, out, err = verify(path, replica)
    assert (status, err) == (1, ''), out
    assert 'data_txn differs' in out


# -- errors -----------------------------------------------------------------

def test_unreachable_server(history):
    """Nobody listens: exit 2 and one line naming the side and address."""
    _, path = history
    port = free_port()
    status, out, err = verify('-t', '1', zeo(port), path)
    assert (status, out) == (2, '')
    assert err == ("zrsd-verify: cannot reach the primary at 127.0.0.1:%d "
                   "(ZEO storage '1'): timed out waiting for connection\n"
                   % port)
    status, out, err = verify('-t', '1', path, zeo(port))
    assert (status, out) == (2, '')
    assert err.startswith('zrsd-verify: cannot reach the replica at '
                          '127.0.0.1:%d' % port)
    assert err.count('\n') == 1


def test_unknown_storage_name(pair):
    """A ZEO server without that storage cannot be used: exit 2."""
    status, out, err = verify('-t', '1', '--storage', 'nosuch',
                              zeo(pair.primary.zeo_port),
                              zeo(pair.replica.zeo_port))
    assert (status, out) == (2, '')
    assert "(ZEO storage 'nosuch')" in err and err.count('\n') == 1


def test_unreadable_files(history, tmp_path):
    _, path = history
    missing = str(tmp_path / 'missing.fs')
    status, out, err = verify(path, missing)
    assert (status, out) == (2, '')
    assert err == 'zrsd-verify: replica file %s: no such file\n' % missing
    junk = tmp_path / 'junk.fs'
    junk.write_bytes(b'not a FileStorage')
    status, out, err = verify(str(junk), path)
    assert (status, out) == (2, '')
    assert err.startswith('zrsd-verify: cannot open the primary file %s: '
                          % junk)
    assert err.count('\n') == 1


@pytest.mark.parametrize('args', [
    [],
    ['a.fs'],
    ['a.fs', 'b.fs', 'c.fs'],
    ['--start', 'xyz', 'a.fs', 'b.fs'],
    ['--start', '00ff', 'a.fs', 'b.fs'],
    ['--timeout', '0', 'a.fs', 'b.fs'],
    ['--nosuch', 'a.fs', 'b.fs'],
], ids=['none', 'one', 'three', 'bad-tid', 'short-tid', 'zero-timeout',
        'unknown-option'])
def test_usage_errors(args):
    status, out, err = verify(*args)
    assert (status, out) == (2, '')
    assert err.startswith('usage: zrsd-verify [options] PRIMARY REPLICA\n')
    assert re.search(r'^zrsd-verify: error: ', err, re.M)


def test_empty_prefix_is_a_usage_error(history):
    _, path = history
    status, out, err = verify('fs:', path)
    assert (status, out) == (2, '')
    assert err == "zrsd-verify: bad primary 'fs:': empty path in 'fs:'\n"
