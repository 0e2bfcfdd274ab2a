"""`zrsd-rewind` repairs an old primary forked by an unplanned failover:
it asks the new primary over ZRS where they part and cuts its file there."""
import filecmp
import os
import shutil
import time
from contextlib import closing
from pathlib import Path

import pytest
import ZODB
from ZODB.blob import FilesystemHelper, is_blob_record
from ZODB.serialize import referencesf

from drill import removed_tids
from harness.certs import Authority
from harness.history import assert_same_after_pack, transactions
from harness.process import free_port, run, stop_all, verify
from harness.zrsd_nodes import (blob_db, blob_files, commit_blobs,
                                primary_and_replica, ssl_lines, write_config)
from test_tls import start_primary


def rewind(node, *options, status=0):
    """zrsd-rewind on `node`'s config (or a path), which must exit with
    `status`; `.removed`: the tids it (would) cut."""
    result = run('zrsd-rewind', '-C', getattr(node, 'config_path', node),
                 '--timeout', '2', *options, status=status)
    result.removed = removed_tids(result.stdout)
    return result


def lost_blob_files(node, tids):
    """The blob files of `node`'s blob records in transactions `tids`."""
    helper = FilesystemHelper(node.blob_dir)
    return sorted({helper.getBlobFilename(oid, tid)
                   for tid, _, _, _, _, records in transactions(node.fs_path)
                   if tid in tids
                   for oid, tid, data, _ in records if is_blob_record(data)})


def follow(node, primary):
    """Stop `node` and configure it as a replica of `primary`."""
    node.stop()
    node.set_upstream(primary.repl_port).write_config()


def test_rewind_a_forked_old_primary(tmp_path, node):
    """Lost transactions and blobs are found (--dry-run changes nothing)
    and cut; the old primary then follows byte for byte."""
    p, r, _ = primary_and_replica(node, blobs=True)
    with closing(blob_db(p, tmp_path / 'cache-p')) as db:
        commit_blobs(db, {'a': b'first a' * 1000, 'b': b'first b'}, 'shared')
        p.commit('plain', 2)
        shared = commit_blobs(db, {'b': b'second b' * 5000}, 'shared too')
        r.wait_for_tid(shared)
        r.stop()
        lost = [commit_blobs(db, {'a': b'lost a', 'c': b'lost c' * 20000},
                             'lost 1'),
                commit_blobs(db, {'b': b'lost b'}, 'lost 2')]
    r.set_upstream(None).start()    # the failover
    with closing(blob_db(r, tmp_path / 'cache-r')) as r_db:
        commit_blobs(r_db, {'a': b'on the new primary'}, 'after failover')
        follow(p, r)
        lost_blobs = lost_blob_files(p, lost)
        assert len(lost_blobs) == 3 and all(map(os.path.exists, lost_blobs))
        before = Path(p.fs_path).read_bytes()
        dry = rewind(p, '--dry-run')
        assert dry.removed == lost, dry.stdout
        assert 'would remove 2 transactions' in dry.stdout
        assert '3 blob files; would rewind to %s' % shared.hex() \
            in dry.stdout
        assert Path(p.fs_path).read_bytes() == before
        assert all(map(os.path.exists, lost_blobs))
        done = rewind(p)
        assert done.removed == lost, done.stdout
        assert 'rewound to %s' % shared.hex() in done.stdout
        after = Path(p.fs_path).read_bytes()
        assert len(after) < len(before) and before.startswith(after)
        assert transactions(p.fs_path)[-1][0] == shared
        assert not any(map(os.path.exists, lost_blobs))
        assert os.path.exists(p.fs_path + '.index')  # rebuilt
        p.start()
        p.wait_for_tid(commit_blobs(r_db, {'c': b'more'}, 'more'))
    verify('fs:' + r.fs_path, 'fs:' + p.fs_path)
    stop_all(p, r)
    assert filecmp.cmp(r.fs_path, p.fs_path, shallow=False)
    assert blob_files(p.blob_dir) == blob_files(r.blob_dir)


def test_nothing_to_rewind(node):
    """A replica only behind the primary is a prefix: exit 0, untouched."""
    p, r, _ = primary_and_replica(node)
    p.commit('one', 1)
    r.wait_for_tid(p.commit('two', 2))
    r.stop()
    p.commit('three', 3)
    before = Path(r.fs_path).read_bytes()
    result = rewind(r)
    assert 'nothing to rewind' in result.stdout
    assert result.removed == []
    assert Path(r.fs_path).read_bytes() == before


def test_another_database_is_refused(node):
    """No transaction in common: exit 1, nothing changed."""
    other = node('other').start()
    other.commit('x', 1)
    other.commit('y', 2)
    p = node('p').start()
    p.commit('z', 3)
    follow(other, p)
    before = Path(other.fs_path).read_bytes()
    result = rewind(other, status=1)
    assert 'no transaction in common' in result.stderr
    assert Path(other.fs_path).read_bytes() == before


def test_running_daemon_is_refused(node):
    """The replica's zrsd holds the storage lock: exit 2, one line."""
    p, r, _ = primary_and_replica(node)
    before = Path(r.fs_path).read_bytes()
    result = rewind(r, status=2)
    assert result.stderr == (
        'zrsd-rewind: %s is in use (is zrsd running? pid %d)\n'
        % (r.fs_path, r.pid))
    assert Path(r.fs_path).read_bytes() == before


def test_fork_after_the_new_primary_packed(node):
    """The new primary packed at the fork: its 'p' copies count as shared."""
    p, r, _ = primary_and_replica(node)
    for i in range(3):
        p.commit('k%d' % i, i)
    shared = p.commit('last shared', 1)
    r.wait_for_tid(shared)
    r.stop()
    fork_time = time.time()
    lost = [p.commit('lost', i) for i in (1, 2)]
    new = r.set_upstream(None).start().commit('after failover', 1)
    with closing(r.client(read_only=False)) as storage:
        storage.pack(fork_time, referencesf)
    assert [(t[0], t[1]) for t in transactions(r.fs_path)] == [
        (shared, 'p'), (new, ' ')]
    follow(p, r)
    result = rewind(p)
    assert result.removed == lost, result.stdout
    p.start()
    p.wait_for_tid(r.commit('more', 2))
    stop_all(p, r)
    assert assert_same_after_pack(r.fs_path, p.fs_path, fork_time)[:2] == (
        1, 2)


def test_tls_primary_and_a_silent_one(tmp_path, node):
    """Over TLS a local transaction after the primary's last is cut (the
    probe ends in silence); a CA not the primary's: exit 2."""
    good, other = Authority(tmp_path, 'good'), Authority(tmp_path, 'other')
    primary, port, db = start_primary(
        node, dict(good=good, primary=good.issue('primary')))
    db.close()
    copy = str(tmp_path / 'copy.fs')
    shutil.copyfile(primary.fs_path, copy)
    with closing(ZODB.DB(copy)) as local, local.transaction() as conn:
        conn.root()['local'] = 1
    local_tid = transactions(copy)[-1][0]

    def config(name, ca):
        cert, key = good.issue('replica')
        return write_config(
            str(tmp_path / name), free_port(), copy, replicate_from=port,
            zeo_lines='  serve-empty on\n',
            zrs_lines='  handshake-timeout 5\n' + ssl_lines(cert, key, ca))
    wrong = rewind(config('wrong.conf', other.path), status=2)
    assert wrong.stderr.startswith('zrsd-rewind: TLS with the primary at '
                                   '127.0.0.1:%d failed: ' % port)
    assert wrong.stderr.count('\n') == 1
    result = rewind(config('replica.conf', good.path))
    assert result.removed == [local_tid]
    assert 'it has no later transaction' in result.stdout
    assert transactions(copy) == transactions(primary.fs_path)


@pytest.mark.parametrize('case', ['unreachable', 'primary', 'missing'])
def test_errors_are_one_line(tmp_path, case):
    """Unreachable primary, no replica section, no config: one line."""
    path = str(tmp_path / 'Data.fs')
    ZODB.DB(path).close()   # the root
    config, message = {
        'unreachable': (dict(replicate_from=free_port()),
                        'cannot reach the primary at 127.0.0.1:'),
        'primary': (dict(replicate_to=free_port()),
                    'no <zrs> section has replicate-from'),
        'missing': (None, 'missing.conf: no such file')}[case]
    config_path = str(tmp_path / (case + '.conf'))
    if config is not None:
        write_config(config_path, free_port(), path, **config)
    result = rewind(config_path, status=2)
    assert result.stderr.startswith('zrsd-rewind: ')
    assert message in result.stderr
    assert result.stderr.count('\n') == 1, result.stderr
