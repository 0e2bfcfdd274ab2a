"""The operator's recipes of the README, followed as written with real
zrsd processes, ZEO clients and the installed commands."""
import os
import re
import subprocess
from contextlib import closing
from pathlib import Path

import pytest
import ZEO
import ZODB.config
from ZEO.Exceptions import ClientDisconnected
from ZODB.POSException import ReadOnlyError

from harness.history import transactions
from harness.process import http_get, run, wait_until
from harness.zrsd_nodes import Writer, opened, wait_for_value


def last_tid(path):
    return transactions(str(path))[-1].tid


def committed(writer, count):
    """`count` commits or more; fails if the writer stopped."""
    assert writer.running(), 'the writer stopped: %r' % writer.error
    return writer.commits >= count


def test_zeo_clients_of_a_replica(node):
    """A read-only client of two replicas reads, cannot commit, fails over."""
    primary = node('primary').start()
    tid = primary.commit('recipe', 'before')
    replica1 = node('replica1', upstream=primary.repl_port).start()
    replica2 = node('replica2', upstream=primary.repl_port)
    replica1.wait_for_tid(tid)
    # replica2 is down: the client opens on replica1, the first that answers.
    db = ZODB.config.databaseFromString(
        '<zodb>\n  <zeoclient>\n    server %s\n    server %s\n'
        '    read-only true\n  </zeoclient>\n</zodb>\n'
        % (replica1.zeo_arg, replica2.zeo_arg))
    with closing(db), opened(db) as (tm, root):
        assert root['recipe'] == 'before'
        root['recipe'] = 'written by a reader'
        with pytest.raises(ReadOnlyError):
            tm.commit()
        tm.abort()
        # Opened writable, a client is refused at registration: it never
        # connects (and would not reach its first commit).
        with pytest.raises(ClientDisconnected, match='timed out waiting'):
            ZEO.client(replica1.zeo_address, wait_timeout=2)
        assert 'client request refused, the storage is read-only' in \
            replica1.log()
        replica2.start().wait_for_tid(tid)
        replica1.stop()
        tid = primary.commit('recipe', 'after')
        wait_for_value(tm, root, 'recipe', 'after')   # on replica2
        assert db.lastTransaction() == tid
    # ZEO.client with a list of (host, port): replica1 is down.
    with closing(ZEO.client([replica1.zeo_address, replica2.zeo_address],
                            read_only=True)) as storage:
        assert storage.lastTransaction() == tid


def test_backups_from_a_running_replica(node, tmp_path):
    """repozo backups and a blob copy of a replica taken under commits,
    restored, agree with the replica (zrsd-verify)."""
    primary = node('primary', blobs=True).start()
    replica = node('replica', upstream=primary.repl_port, blobs=True)
    backups, blobs = tmp_path / 'backups' / 'zodb', tmp_path / 'backups/blobs'
    backups.mkdir(parents=True)
    restore = tmp_path / 'restore' / 'Data.fs'
    restore.parent.mkdir()
    with Writer(primary, blob_cache=str(tmp_path / 'cache')) as writer:
        reader = replica.start().client()   # once the primary has a commit

        def arriving(count):
            wait_until(lambda: committed(writer, count) and
                       reader.lastTransaction() >= writer.tids[count - 1],
                       message='%d commits on the replica' % count)
        arriving(20)
        run('repozo', '-B', '-F', '-r', backups, '-f', replica.fs_path)
        full = set(backups.iterdir())
        arriving(writer.commits + 20)
        run('repozo', '-B', '-r', backups, '-f', replica.fs_path)
        incremental = set(backups.iterdir()) - full
        assert '.deltafs' in {p.suffix for p in incremental}, incremental
        # rsync -a SRC/ DST/ (not installed here) copies what this does.
        subprocess.run(['cp', '-a', replica.blob_dir + '/.', str(blobs)],
                       check=True)
        arriving(writer.commits + 5)
        run('repozo', '-R', '-r', backups, '-o', restore)
        backed_up = last_tid(restore)
        out = run('zrsd-verify', '--replica-blob-dir', blobs,
                  replica.zeo_arg, 'fs:%s' % restore).stdout
    reader.close()
    assert writer.error is None, writer.error
    # The incremental backup ends at a commit 20 or more before the last.
    assert backed_up in writer.tids[19:-5]
    agree = re.search(r'^(\d+) blob files agree', out, re.M)
    assert agree and int(agree.group(1)) > 0, out
    assert 'not compared' not in out and backed_up.hex() in out, out


def test_seeding_a_replica_from_a_copy(node, tmp_path):
    """A replica seeded from a repozo restore, or from a primary's file cut
    mid-transaction (cut back, a WARNING), asks for what came after."""
    primary = node('primary').start()
    with Writer(primary) as writer:
        wait_until(lambda: committed(writer, 30), message='30 commits')
    source = node('source', upstream=primary.repl_port).start()
    source.wait_for_tid(writer.tids[-1])
    backups = tmp_path / 'backups'
    backups.mkdir()
    seeded = node('seeded', upstream=primary.repl_port)
    seeded.fs_path = os.path.join(seeded.directory, 'Data.fs')
    run('repozo', '-B', '-F', '-r', backups, '-f', source.fs_path)
    run('repozo', '-R', '-r', backups, '-o', seeded.fs_path)
    copied = last_tid(seeded.fs_path)
    assert copied == writer.tids[-1]

    # A running primary's file, cut in the middle of its last transaction.
    cut = node('cut', upstream=primary.repl_port)
    cut.fs_path = os.path.join(cut.directory, 'Data.fs')
    data = Path(primary.fs_path).read_bytes()
    size = int.from_bytes(data[-8:], 'big')      # the last transaction's
    start = len(data) - 8 - size
    Path(cut.fs_path).write_bytes(data[:start + size // 2])
    before_cut = transactions(primary.fs_path)[-2].tid

    for value in range(5):
        last = primary.commit('seeded', value)
    seeded.start()
    seeded.wait_for_log('requesting transactions after %s' % copied.hex())
    cut.start()
    warning = [line for line in cut.log().splitlines()
               if ' WARNING ' in line and cut.fs_path + '.tr0' in line]
    assert warning, cut.log()
    assert Path(cut.fs_path + '.tr0').read_bytes() == \
        data[start:start + size // 2]
    cut.wait_for_log('requesting transactions after %s' % before_cut.hex())
    for each in (seeded, cut):
        each.wait_for_tid(last)
        run('zrsd-verify', primary.zeo_arg, each.zeo_arg)


class RetryingWriter(Writer):
    """A `Writer` retrying each transaction until it commits (while the
    primary restarts)."""

    def _commit(self, tm, conn):
        while True:
            try:
                return super()._commit(tm, conn)
            except (ClientDisconnected, ReadOnlyError):
                tm.abort()
                if self._stopping.is_set():
                    return


def test_rolling_restart(node):
    """Replicas, then the primary, restarted one by one under a writer:
    every commit it saw is on both replicas, which agree with the primary."""
    primary = node('primary', monitor=True).start()
    replicas = [node('replica%d' % n, upstream=primary.repl_port,
                     monitor=True) for n in (1, 2)]
    with RetryingWriter(primary) as writer:
        def progress(count=10):
            seen = writer.commits + count
            wait_until(lambda: committed(writer, seen),
                       message='%d commits' % seen)
        for replica in replicas:
            replica.start()
        progress()
        for replica in replicas:
            replica.stop()
            had = last_tid(replica.fs_path)
            progress()
            replica.start()
            replica.wait_for_log('requesting transactions after %s'
                                 % had.hex())
            wait_until(lambda: http_get(replica.monitor_port,
                                        '/ready')[0] == 200,
                       message='%s /ready 200' % replica.name)
        primary.stop()
        assert 'every secondary received the last commit' in primary.log()
        primary.start()
        progress()
    assert writer.error is None, writer.error
    last = primary.last_tid()
    assert writer.tids[-1] == last
    for replica in replicas:
        replica.wait_for_tid(last)
        assert set(writer.tids) <= {t.tid for t in
                                    transactions(replica.fs_path)}
        run('zrsd-verify', primary.zeo_arg, replica.zeo_arg)
    assert run('zrsd', '--version').stdout.startswith('zrsd ')
    status, _, metrics = http_get(primary.monitor_port, '/metrics')
    assert status == 200 and 'zrsd_build_info{' in metrics
