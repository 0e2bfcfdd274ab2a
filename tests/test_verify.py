"""`zrsd-verify` run against a running zrsd primary and replica (module
fixture) and against files written here with one change, or none."""
import base64
import collections
import os
import re
import shutil
from contextlib import closing

import pytest
import transaction
import ZODB
import ZODB.blob
from persistent.mapping import PersistentMapping
from ZODB.FileStorage import FileStorage
from ZODB.TimeStamp import TimeStamp
from ZODB.fsIndex import fsIndex
from ZODB.serialize import referencesf
from ZODB.utils import p64, u64

from harness import zczrs
from harness.history import pack_stop_tid, transactions, write_history
from harness.process import free_port, stop_all, verify, wait_until
from harness.zrsd_nodes import (Writer, ZrsdNode, blob_db, blob_files,
                                commit_blobs)


def tids(fs_path, last=b'\xff' * 8):
    """The tids in a FileStorage file up to `last`."""
    return [txn.tid for txn in transactions(fs_path) if txn.tid <= last]


def tid_text(tid):
    return '%s (%s UTC)' % (tid.hex(), TimeStamp(tid))


class Pair:
    """The module's zrsd primary (300 transactions with undos) and replica
    following it, running; `zeos`: their ZEO addresses."""

    def __init__(self, directory, register):
        self.primary = ZrsdNode(directory, 'primary', register=register)
        self.populated = zczrs.populate(self.primary.start().zeo_address,
                                        transactions=300, undo_every=50)
        assert self.populated.undos and self.populated.creation_undos
        self.replica = ZrsdNode(directory, 'replica', register=register,
                                upstream=self.primary.repl_port).start()
        self.zeos = self.primary.zeo_arg, self.replica.zeo_arg
        self.caught_up()

    def caught_up(self):
        """Wait until the replica holds the primary's last transaction."""
        self.replica.wait_for_tid(self.primary.last_tid())
        return self.primary.last_tid()


@pytest.fixture(scope='module')
def pair(tmp_path_factory, module_processes):
    return Pair(tmp_path_factory.mktemp('verify'), module_processes)


def test_both_zeo_agree(pair):
    """Over ZEO all agree, the replica is up to date; -q prints nothing."""
    history = tids(pair.primary.fs_path, pair.caught_up())
    assert verify(*pair.zeos).splitlines() == [
        'OK: %d transactions agree, %s to %s' % (
            len(history), tid_text(history[0]), tid_text(history[-1])),
        'replica up to date with the primary']
    assert verify('--quiet', *pair.zeos) == ''


def test_objects_agree(pair):
    """--objects counts objects whose last record has data (not undone)."""
    last = pair.caught_up()
    current = {r.oid: r.data for txn in transactions(pair.primary.fs_path)
               if txn.tid <= last for r in txn.records}
    objects = sum(1 for data in current.values() if data is not None)
    assert objects < len(current)  # some creations were undone
    assert 'OK: %d objects agree as of %s' % (objects, tid_text(last)) in \
        verify('--objects', *pair.zeos)


@pytest.mark.parametrize('primary, replica', [
    ('{p.fs_path}', 'zeo:{r_zeo}'), ('{p.zeo_port}', 'fs:{r.fs_path}')])
def test_files_of_running_servers(pair, primary, replica):
    """A server's open file against the other's ZEO port (or bare port)."""
    count = len(tids(pair.primary.fs_path, pair.caught_up()))
    names = dict(p=pair.primary, r=pair.replica, r_zeo=pair.replica.zeo_arg)
    out = verify(primary.format(**names), replica.format(**names))
    assert 'OK: %d transactions agree' % count in out


def test_while_the_primary_commits(pair):
    """Commits on the primary during the comparison are no divergence."""
    with Writer(pair.primary) as writer:
        wait_until(lambda: writer.commits >= 3, message='first commits')
        out = verify('--objects', *pair.zeos)
        assert 'transactions agree' in out and 'objects agree' in out
    assert writer.error is None
    pair.caught_up()


def test_replica_behind(pair, node):
    """A replica 5 transactions behind agrees and lags by those, in time."""
    replica = node('behind', upstream=pair.primary.repl_port).start()
    target = pair.primary.last_tid()
    replica.wait_for_tid(target)
    replica.stop()
    more = [pair.primary.commit('behind', i) for i in range(5)]
    assert pair.primary.last_tid() == more[-1]
    history = tids(replica.fs_path)
    for primary in [pair.primary.zeo_arg, pair.primary.fs_path]:
        assert verify(primary, replica.fs_path).splitlines() == [
            'OK: %d transactions agree, %s to %s' % (
                len(history), tid_text(history[0]), tid_text(target)),
            'replica behind the primary by 5 transactions, %.3f seconds; '
            'primary last transaction %s' % (
                TimeStamp(more[-1]).timeTime() -
                TimeStamp(target).timeTime(), tid_text(more[-1]))]
    # The primary has newer revisions of some objects.
    assert 'objects agree as of %s' % tid_text(target) in verify(
        '--objects', pair.primary.zeo_arg, replica.fs_path)


def test_start_tid(pair):
    """--start: the comparison begins at that tid or the first after it."""
    history = tids(pair.primary.fs_path, pair.caught_up())
    start = history[100]
    out = verify('--start', '0x' + start.hex().upper(), *pair.zeos)
    assert 'OK: %d transactions agree, %s to' % (
        len(history) - 100, tid_text(start)) in out
    out = verify('--start', p64(u64(start) + 1).hex(),
                 pair.primary.fs_path, pair.replica.fs_path)
    assert 'OK: %d transactions agree, %s to' % (
        len(history) - 101, tid_text(history[101])) in out


@pytest.fixture(scope='module')
def original(pair):
    """The populated history (`Txn`s)."""
    return [txn for txn in transactions(pair.primary.fs_path)
            if txn.tid <= pair.populated.last_tid]


@pytest.fixture(scope='module')
def rewrite(original, tmp_path_factory):
    """A faithful rewrite of the `original` history in a file: its path."""
    return write_history(
        tmp_path_factory.mktemp('histories') / 'original.fs', original)


def forged(tid):
    """A transaction of our own at `tid`."""
    return (tid, ' ', b'', b'forged', {},
            [(p64(10 ** 6), tid, b'forged', None)])


def alter(history, how):
    """(altered `history`, index of its first divergence, the report's text);
    the change made after the middle where it can be dropped."""
    history = list(history)
    referenced = {r.data_txn for txn in history for r in txn.records}
    n = next(i for i in range(len(history) // 2, len(history))
             if history[i].records and history[i].tid not in referenced
             and all(r.data is not None and r.data_txn is None
                     for r in history[i].records))
    txn, extra = history[n], p64(u64(history[n].tid) + 1)
    *rest, last = txn.records
    if how in ('data', 'description', 'extension'):
        history[n], what = {
            'data': (txn._replace(records=rest + [last._replace(
                data=last.data + b'!')]), 'record %d: oid 0x%016x: data '
                'differ' % (len(rest), u64(last.oid))),
            'description': (txn._replace(
                description=txn.description + b' (edit)'),
                'description differs'),
            'extension': (txn._replace(
                extension=dict(txn.extension, forged=1)), 'extension differs'),
        }[how]
        return history, n, what
    if how == 'missing':
        del history[n]
        return history, n, 'transaction missing on the replica'
    if how == 'ahead':
        n, extra = len(history) - 1, p64(u64(history[-1].tid) + 1)
    else:       # between two of the primary's transactions
        assert how == 'extra' and extra < history[n + 1].tid
    history.insert(n + 1, forged(extra))
    return history, n + 1, 'transaction on the replica only'


def test_rewrite_is_faithful(pair, original, rewrite):
    """The control: the unchanged rewrite agrees with the primary."""
    assert transactions(rewrite) == original
    for primary in [pair.primary.fs_path, pair.primary.zeo_arg]:
        assert 'OK: %d transactions agree' % len(original) in verify(
            primary, rewrite)


@pytest.mark.parametrize('how', ['data', 'description', 'extension',
                                 'missing', 'extra', 'ahead'])
def test_divergence(original, rewrite, tmp_path, how):
    """One change: exit 1, the first divergent tid, what, how many agreed."""
    altered, index, what = alter(original, how)
    replica = write_history(tmp_path / 'altered.fs', altered)
    first, agreed = verify(rewrite, replica, status=1).splitlines()
    tid = (original if how == 'missing' else altered)[index][0]
    assert first.startswith('DIVERGED at transaction %s: ' % tid_text(tid))
    assert what in first
    assert agreed == '%d transactions agreed before it' % index
    assert verify('-q', rewrite, replica, status=1) == first + '\n'


def test_divergence_against_running_primary(pair, original, tmp_path):
    """The running primary against a diverging `fs:` file (no `.fs`)."""
    altered, index, what = alter(original, 'data')
    replica = write_history(tmp_path / 'altered.data', altered)
    assert verify(pair.primary.zeo_arg, 'fs:' + replica, status=1).startswith(
        'DIVERGED at transaction %s: %s' % (tid_text(original[index][0]),
                                            what))


def test_empty_replica(original, rewrite, tmp_path):
    """An empty replica agrees and lags by the whole history."""
    empty = write_history(tmp_path / 'empty.fs', [])
    assert verify('--objects', rewrite, empty).splitlines() == [
        'OK: no transactions to compare',
        'replica behind the primary by %d transactions (the replica is '
        'empty); primary last transaction %s' % (
            len(original), tid_text(original[-1][0])),
        'OK: no objects to compare (the replica is empty)']


def test_objects_diverge_through_a_bad_index(original, rewrite, tmp_path):
    """An `.index` naming an older revision: --objects names both serials."""
    last_txn_oids = {r.oid for r in original[-1].records}
    revisions = collections.Counter(
        r.oid for txn in original for r in txn.records
        if r.data is not None and r.oid not in last_txn_oids)
    oid = min(oid for oid, count in revisions.items() if count >= 2)
    tampered = str(tmp_path / 'tampered.fs')
    shutil.copyfile(rewrite, tampered)
    with closing(FileStorage(tampered, read_only=True)) as fs:
        current = fs._read_data_header(fs._lookup_pos(oid), oid)
        previous = fs._read_data_header(current.prev, oid)
    info = fsIndex.load(rewrite + '.index')
    info['index'][oid] = current.prev
    info['index'].save(info['pos'], tampered + '.index')
    verify(rewrite, tampered)
    out = verify('--objects', rewrite, tampered, status=1)
    assert ('DIVERGED: object 0x%016x as of %s: primary serial %s, '
            % (u64(oid), tid_text(original[-1][0]), current.tid.hex())
            in out)
    assert '; replica serial %s, ' % previous.tid.hex() in out


def packed_copy(path, copy, pack_time):
    shutil.copyfile(path, copy)
    with closing(FileStorage(copy)) as fs:
        fs.pack(pack_time, referencesf)
    return transactions(copy)


@pytest.fixture(scope='module')
def packed(original, rewrite, tmp_path_factory):
    """The rewrite packed half-way: (its transactions, path, index in the
    original of the first transaction after the pack time)."""
    middle = len(original) // 2
    pack_time = (TimeStamp(original[middle - 1][0]).timeTime()
                 + TimeStamp(original[middle][0]).timeTime()) / 2
    copy = str(tmp_path_factory.mktemp('packed') / 'packed.fs')
    result = packed_copy(rewrite, copy, pack_time)
    assert [t[1] for t in result].count('p') > 0
    assert len(result) < len(original)
    assert result[-(len(original) - middle):] == original[middle:]
    return result, copy, middle


def test_packed_side_agrees(rewrite, packed):
    """A packed copy against the original, in both roles, agrees."""
    packed_history, packed_path, middle = packed
    kept = sum(1 for t in packed_history if t[1] == 'p')
    for primary, replica, side in [(rewrite, packed_path, 'replica'),
                                   (packed_path, rewrite, 'primary')]:
        lines = verify(primary, replica).splitlines()
        assert lines[0].startswith('OK: %d transactions agree, ' % (
            len(packed_history)))
        assert lines[1] == ('packed history on the %s: %d transactions '
                            'compared as packed, %d found on one side only'
                            % (side, kept, middle - kept))
        assert lines[3] == ('comparing every object too (--objects), as '
                            'history was packed')
        assert lines[4].startswith('OK: ') and 'objects agree as of' in \
            lines[4]


@pytest.mark.parametrize('how', ['packed-data', 'packed-extra-record',
                                 'missing-after-pack', 'packed-user'])
def test_packed_divergence(original, rewrite, packed, tmp_path, how):
    """What a pack cannot explain is still a divergence."""
    altered, _, middle = packed
    altered = list(altered)
    n = next(i for i, t in enumerate(altered) if t[1] == 'p')
    txn = altered[n]
    first, *rest = txn.records
    if how == 'missing-after-pack':
        txn = altered.pop(len(altered) - (len(original) - middle) + 5)
        what = 'transaction missing on the replica'
    else:
        altered[n], what = {
            'packed-data': (txn._replace(records=[first._replace(
                data=first.data + b'!')] + rest),
                'oid 0x%016x: data differ' % u64(first.oid)),
            'packed-extra-record': (txn._replace(
                records=txn.records + forged(txn.tid)[5]),
                'oid 0x%016x on the replica only, in a transaction packed '
                'there only' % 10 ** 6),
            'packed-user': (txn._replace(user=txn.user + b' (edited)'),
                            'user differs')}[how]
    replica = write_history(tmp_path / 'altered.fs', altered)
    out = verify(rewrite, replica, status=1)
    assert out.startswith('DIVERGED at transaction %s: ' % tid_text(txn.tid))
    assert what in out.splitlines()[0]


def test_inline_data_for_a_back_pointer_into_the_packed_part(tmp_path):
    """Inline data for an undo's back pointer agrees only if packed away."""
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
    inline = [(oid, tid, data, None)]
    inlined = packed_copy(path, str(tmp_path / 'packed.fs'), pack_time)
    inlined[-1] = inlined[-1][:5] + (inline,)
    replica = write_history(tmp_path / 'inlined.fs', inlined)
    assert transactions(replica)[-1][5] == inline
    assert 'packed history on the replica' in verify(path, replica)
    # The same record inline in an unpacked copy: that is a divergence.
    replica = write_history(tmp_path / 'unpacked.fs', original[:-1] + [
        original[-1][:5] + (inline,)])
    assert 'data_txn differs' in verify(path, replica, status=1)


@pytest.mark.parametrize('args, pattern', [
    (['-t', '1', '{closed}', '{file}'], r"cannot reach the primary at "
     r"{closed}: Connection refused"),
    (['-t', '1', '{file}', '{closed}'],
     r'cannot reach the replica at {closed}.*'),
    (['-t', '1', '--storage', 'nosuch', '{primary}', '{replica}'],
     r".*\(ZEO storage 'nosuch'\).*"),
    (['{file}', '{missing}'], r'replica file {missing}: no such file'),
    (['{junk}', '{file}'], r'cannot open the primary file {junk}: .*'),
    (['fs:', '{file}'], r"bad primary 'fs:': empty path in 'fs:'"),
], ids=['unreachable-primary', 'unreachable-replica', 'unknown-storage',
        'missing-file', 'not-a-filestorage', 'empty-prefix'])
def test_errors(pair, rewrite, tmp_path, args, pattern):
    """What cannot be compared: exit 2 and one line naming the side."""
    junk = tmp_path / 'junk.fs'
    junk.write_bytes(b'not a FileStorage')
    names = dict(closed='127.0.0.1:%d' % free_port(), file=rewrite,
                 primary=pair.primary.zeo_arg, replica=pair.replica.zeo_arg,
                 missing=str(tmp_path / 'missing.fs'), junk=str(junk))
    err = verify(*[arg.format(**names) for arg in args], status=2)
    assert re.fullmatch('zrsd-verify: ' + pattern.format(**{
        key: re.escape(value) for key, value in names.items()}) + '\n', err)


@pytest.mark.parametrize('args', [
    [], ['a.fs'], ['a.fs', 'b.fs', 'c.fs'],
    ['--start', 'xyz', 'a.fs', 'b.fs'], ['--start', '00ff', 'a.fs', 'b.fs'],
    ['--timeout', '0', 'a.fs', 'b.fs'], ['--nosuch', 'a.fs', 'b.fs'],
], ids=['none', 'one', 'three', 'bad-tid', 'short-tid', 'zero-timeout',
        'unknown-option'])
def test_usage_errors(args):
    err = verify(*args, status=2)
    assert err.startswith('usage: zrsd-verify [options] PRIMARY REPLICA\n')
    assert re.search(r'^zrsd-verify: error: ', err, re.M)


def test_blob_files(tmp_path, node):
    """Blob files are compared (size, sha256) over ZEO and in directories
    given; a changed or missing one is a divergence."""
    primary = node('primary', blobs=True).start()
    replica = node('replica', upstream=primary.repl_port, blobs=True)
    with closing(blob_db(primary, tmp_path / 'cache')) as db:
        commit_blobs(db, {'a': b'a' * 100000, 'b': b'b'}, 'two blobs')
        commit_blobs(db, {'a': b'A' * 5000}, 'a changed')
    replica.start()
    replica.wait_for_tid(primary.last_tid())
    agree = '%d blob files agree' % sum(
        ZODB.blob.is_blob_record(record.data)
        for txn in transactions(primary.fs_path) for record in txn.records)
    assert agree in verify(primary.zeo_arg, replica.zeo_arg)
    stop_all(replica, primary)
    files = [primary.fs_path, replica.fs_path,
             '--primary-blob-dir', primary.blob_dir,
             '--replica-blob-dir', replica.blob_dir]
    assert agree in verify(*files)
    out = verify(primary.fs_path, replica.fs_path)
    assert '%s records whose files were not compared: the primary and the ' \
        'replica has no blobs' % agree.split(' files')[0] in out
    first = os.path.join(replica.blob_dir, min(
        n for n in blob_files(replica.blob_dir) if n.endswith('.blob')))
    with open(first, 'r+b') as f:
        f.write(b'X')
    out = verify(*files, status=1)
    assert re.search(r'DIVERGED at transaction \S+ .*: record \d+: oid '
                     r'\S+: blob files differ: primary \d+ bytes, sha256 '
                     r'\w+, replica \d+ bytes, sha256 \w+', out), out
    os.remove(first)
    assert 'replica no blob file' in verify(*files, status=1)
