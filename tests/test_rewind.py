"""`zrsd-rewind`: repairing a forked replica, with real zrsd processes.

The fork is made the way an unplanned failover makes it: a primary P and
its replica R (both with blobs) agree; R stops; P commits two more
transactions that R never receives (the "lost" ones); R is promoted
(restarted as a primary) and commits; P stops and is configured as a
replica of R.  `zrsd-rewind` must find the last transaction both hold by
asking R over ZRS, cut P's file there and remove the lost transactions'
blob files, after which P replicates from R and ends byte-identical to it.
"""
import filecmp
import os
import re
import subprocess

import ZEO
from ZODB.blob import FilesystemHelper, is_blob_record

import zczrs
from support import BIN, free_port, transactions
from test_blobs import commit_blobs
from zrsd_nodes import ZrsdNode

REWIND = os.path.join(BIN, 'zrsd-rewind')

# "would remove TID (time UTC) ..." / "removed TID (time UTC) ...".
REMOVED = re.compile(r'^(?:would remove|removed) ([0-9a-f]{16}) \(', re.M)


def rewind(node, *options):
    """Run zrsd-rewind on `node`'s config; the CompletedProcess."""
    return subprocess.run(
        [REWIND, '-C', node.config_path, '--timeout', '2'] + list(options),
        capture_output=True, text=True, timeout=120)


def removed_tids(result):
    return [bytes.fromhex(tid) for tid in REMOVED.findall(result.stdout)]


def read(path):
    with open(path, 'rb') as f:
        return f.read()


def blob_files(node, tids):
    """The blob files of `node`'s blob records in transactions `tids`."""
    helper = FilesystemHelper(node.blob_dir)
    return sorted({helper.getBlobFilename(oid, tid)
                   for tid, _, _, _, _, records in transactions(node.fs_path)
                   if tid in tids
                   for oid, tid, data, _ in records if is_blob_record(data)})


def blob_tree(directory):
    """{relative path: content} of the committed blob files."""
    tree = {}
    for parent, dirs, files in os.walk(directory):
        dirs[:] = [name for name in dirs if name != 'tmp']
        for name in files:
            path = os.path.join(parent, name)
            tree[os.path.relpath(path, directory)] = read(path)
    return tree


def blob_db(node, directory):
    return ZEO.DB(node.zeo_address, blob_dir=str(directory),
                  shared_blob_dir=False)


def primary_and_replica(tmp_path, register, blobs=False):
    """A started primary holding a root object, and a started replica of
    it that has caught up."""
    primary = ZrsdNode(tmp_path / 'p', 'p', blobs=blobs,
                       register=register).start()
    tid = zczrs.commit_change(primary.zeo_address, 'created', 1)
    replica = ZrsdNode(tmp_path / 'r', 'r', upstream=primary.repl_port,
                       blobs=blobs, register=register).start()
    replica.wait_for_tid(tid)
    return primary, replica


def test_rewind_a_forked_old_primary(tmp_path, processes):
    """The lost transactions (with blobs) are found, cut and their blob
    files removed; the old primary then follows the new one and ends
    byte-identical to it, blob files included."""
    p, r = primary_and_replica(tmp_path, processes, blobs=True)
    db = blob_db(p, tmp_path / 'cache-p')
    try:
        commit_blobs(db, {'a': b'first a' * 1000, 'b': b'first b'}, 'shared')
        zczrs.commit_change(p.zeo_address, 'plain', 2)
        shared = commit_blobs(db, {'b': b'second b' * 5000}, 'shared too')
        r.wait_for_tid(shared)
        r.stop()
        lost = [commit_blobs(db, {'a': b'lost a', 'c': b'lost c' * 20000},
                             'lost 1'),
                commit_blobs(db, {'b': b'lost b'}, 'lost 2')]
    finally:
        db.close()

    # Failover: R becomes the primary and commits; P is stopped.
    r.upstream, r.repl_port = None, free_port()
    r.start()
    r_db = blob_db(r, tmp_path / 'cache-r')
    try:
        commit_blobs(r_db, {'a': b'on the new primary'}, 'after failover')
        p.stop()
        p.upstream, p.repl_port = r.repl_port, None
        p.write_config()
        lost_blobs = blob_files(p, lost)
        assert len(lost_blobs) == 3 and all(map(os.path.exists, lost_blobs))
        before = read(p.fs_path)

        dry = rewind(p, '--dry-run')
        assert dry.returncode == 0, dry.stderr
        assert removed_tids(dry) == lost, dry.stdout
        assert 'would remove 2 transactions' in dry.stdout
        assert '3 blob files; would rewind to %s' % shared.hex() \
            in dry.stdout
        assert read(p.fs_path) == before
        assert all(map(os.path.exists, lost_blobs))

        done = rewind(p)
        assert done.returncode == 0, done.stderr
        assert removed_tids(done) == lost, done.stdout
        assert 'rewound to %s' % shared.hex() in done.stdout
        after = read(p.fs_path)
        assert len(after) < len(before) and before.startswith(after)
        assert transactions(p.fs_path)[-1][0] == shared
        assert not any(map(os.path.exists, lost_blobs))
        assert os.path.exists(p.fs_path + '.index')  # rebuilt

        p.start()
        last = commit_blobs(r_db, {'c': b'more on the new primary'}, 'more')
        p.wait_for_tid(last)
    finally:
        r_db.close()
    verify = subprocess.run(
        [os.path.join(BIN, 'zrsd-verify'), 'fs:' + r.fs_path,
         'fs:' + p.fs_path], capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    p.stop()
    r.stop()
    assert filecmp.cmp(r.fs_path, p.fs_path, shallow=False)
    assert blob_tree(p.blob_dir) == blob_tree(r.blob_dir)


def test_nothing_to_rewind(tmp_path, processes):
    """A replica that is behind but holds only the primary's transactions
    is a prefix: exit 0, the file untouched."""
    p, r = primary_and_replica(tmp_path, processes)
    zczrs.commit_change(p.zeo_address, 'one', 1)
    r.wait_for_tid(zczrs.commit_change(p.zeo_address, 'two', 2))
    r.stop()
    zczrs.commit_change(p.zeo_address, 'three', 3)
    before = read(r.fs_path)
    result = rewind(r)
    assert result.returncode == 0, result.stderr
    assert 'nothing to rewind' in result.stdout
    assert removed_tids(result) == []
    assert read(r.fs_path) == before


def test_another_database_is_refused(tmp_path, processes):
    """No transaction in common: exit 1, nothing changed."""
    other = ZrsdNode(tmp_path / 'other', 'other', register=processes).start()
    zczrs.commit_change(other.zeo_address, 'x', 1)
    zczrs.commit_change(other.zeo_address, 'y', 2)
    other.stop()
    p = ZrsdNode(tmp_path / 'p', 'p', register=processes).start()
    zczrs.commit_change(p.zeo_address, 'z', 3)
    other.upstream, other.repl_port = p.repl_port, None
    other.write_config()
    before = read(other.fs_path)
    result = rewind(other)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'no transaction in common' in result.stderr
    assert read(other.fs_path) == before


def test_running_daemon_is_refused(tmp_path, processes):
    """The replica's zrsd holds the storage lock: exit 2, one line."""
    p, r = primary_and_replica(tmp_path, processes)
    before = read(r.fs_path)
    result = rewind(r)
    assert result.returncode == 2
    assert result.stderr == (
        'zrsd-rewind: %s is in use (is zrsd running? pid %d)\n'
        % (r.fs_path, r.process.pid))
    assert read(r.fs_path) == before
