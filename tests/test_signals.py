"""Signals sent to a real `zrsd` process.

- SIGTERM and SIGINT stop zrsd gracefully: exit status 0, and the replica's
  FileStorage is closed cleanly, which saves its `.index` (otherwise the
  next start scans everything written since the index was last saved:
  after a first replication, the whole file).
- SIGUSR2 reopens the log files, for logrotate: after the log file is
  renamed, new lines go to a new file at the configured path.

Not tested here: a second SIGTERM forcing exit during a slow shutdown.
zrsd's shutdown has no phase a test can hold open on purpose (every step
is bounded or local), so the second signal could only be raced against
the end of the shutdown, which would make a flaky test.
"""
import os
import signal

import pytest
from ZODB.fsIndex import fsIndex

from harness.history import transactions
from harness.process import free_port, wait_until
from harness.zczrs import ZcZrsPrimary, commit_change
from harness.zrsd_nodes import ZrsdNode

SERVING = ' over ZEO at '


@pytest.fixture(scope='module')
def primary(tmp_path_factory):
    """A running zc.zrs primary holding two transactions."""
    primary = ZcZrsPrimary(tmp_path_factory.mktemp('primary'))
    primary.start()
    try:
        commit_change(primary.zeo_address, 'a', 1)
        commit_change(primary.zeo_address, 'b', 2)
        primary.last = primary.last_tid()
        yield primary
    finally:
        primary.close()


def index_position(fs_path):
    """The file position a FileStorage `.index` file was saved at."""
    return fsIndex.load(fs_path + '.index')['pos']


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT],
                         ids=['SIGTERM', 'SIGINT'])
def test_stop_signal_closes_storage_and_exits_0(signum, primary, tmp_path,
                                                processes):
    # zrsd serves once the replica holds data, i.e. it is replicating.
    node = ZrsdNode(tmp_path, 'zrsd', upstream=primary.repl_port,
                    register=processes).start()
    fs_path = node.fs_path
    # FileStorage wrote an index when it created the file; it is stale
    # now that transactions were replicated.
    assert index_position(fs_path) < os.path.getsize(fs_path)

    node.signal(signum)
    assert node.process.popen.wait(60) == 0, node.log()
    name = signal.Signals(signum).name
    assert 'stopping (%s)' % name in node.log()
    # Closed cleanly: the index covers the whole file, so the next start
    # does not scan it.
    assert index_position(fs_path) == os.path.getsize(fs_path)
    replicated = [txn[0] for txn in transactions(fs_path)]
    assert replicated and replicated[-1] <= primary.last


def read(path):
    with open(path, 'rb') as f:
        return f.read().decode('utf-8', 'replace')


def test_sigusr2_reopens_log_files(tmp_path, processes):
    log_path = str(tmp_path / 'zrsd.log')
    rotated = log_path + '.1'
    # A replica (primary down, serving at once) logging to a file.
    proc = ZrsdNode(tmp_path, 'replica', upstream=free_port(),
                    zeo_lines='  serve-empty on\n', log_file=log_path,
                    register=processes).launch()
    wait_until(lambda: os.path.exists(log_path) and SERVING in read(log_path),
               60, message='zrsd serving, in %s' % log_path)

    # logrotate's way: rename, then tell the program.
    os.rename(log_path, rotated)
    proc.signal(signal.SIGUSR2)
    wait_until(lambda: os.path.exists(log_path)
               and 'log files reopened' in read(log_path), 60,
               message='a new %s with the reopen line' % log_path)
    old = read(rotated)
    assert SERVING in old
    assert 'log files reopened' not in old

    # Nothing goes to the renamed file any more: another reopen line, and
    # the shutdown lines, land in the new one.
    proc.signal(signal.SIGUSR2)
    wait_until(lambda: read(log_path).count('log files reopened') == 2, 60,
               message='the second reopen line')
    assert proc.stop() == 0
    new = read(log_path)
    assert 'stopping (SIGTERM)' in new and 'stopped' in new
    assert read(rotated) == old
    assert SERVING not in new   # the new file starts after the rename
