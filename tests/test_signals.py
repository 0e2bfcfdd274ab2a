"""Signals to a real `zrsd`: SIGTERM and SIGINT stop it (exit 0) closing
its FileStorage cleanly; SIGUSR2 reopens the log files."""
import os
import signal

import pytest
from ZODB.fsIndex import fsIndex

from harness.history import transactions
from harness.process import free_port, read_text, wait_until
from harness.zczrs import ZcZrsPrimary, commit_change

SERVING = ' over ZEO at '


@pytest.fixture(scope='module')
def primary(tmp_path_factory, module_processes):
    """A running zc.zrs primary holding two transactions."""
    primary = ZcZrsPrimary(tmp_path_factory.mktemp('primary'),
                           register=module_processes)
    commit_change(primary.start().zeo_address, 'a', 1)
    primary.last = commit_change(primary.zeo_address, 'b', 2)
    return primary


def index_position(fs_path):
    """The file position a FileStorage `.index` file was saved at."""
    return fsIndex.load(fs_path + '.index')['pos']


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT],
                         ids=['SIGTERM', 'SIGINT'])
def test_stop_signal_closes_storage_and_exits_0(signum, primary, node):
    # zrsd serves once the replica holds data, i.e. it is replicating;
    # the index written when the file was created is stale by then.
    zrsd = node('zrsd', upstream=primary.repl_port).start()
    assert index_position(zrsd.fs_path) < os.path.getsize(zrsd.fs_path)
    zrsd.signal(signum)
    assert zrsd.wait() == 0, zrsd.log()
    assert 'stopping (%s)' % signal.Signals(signum).name in zrsd.log()
    # Closed cleanly: the index covers the whole file.
    assert index_position(zrsd.fs_path) == os.path.getsize(zrsd.fs_path)
    replicated = [txn.tid for txn in transactions(zrsd.fs_path)]
    assert replicated and replicated[-1] <= primary.last


def test_sigusr2_reopens_log_files(tmp_path, node):
    """After logrotate's rename and SIGUSR2, lines go to a new file."""
    log_path = str(tmp_path / 'zrsd.log')
    rotated = log_path + '.1'
    proc = node('replica', upstream=free_port(), log_file=log_path,
                zeo_lines='  serve-empty on\n').launch()
    wait_until(lambda: SERVING in read_text(log_path), 60,
               message='zrsd serving, in %s' % log_path)
    os.rename(log_path, rotated)
    proc.signal(signal.SIGUSR2)
    wait_until(lambda: 'log files reopened' in read_text(log_path), 60,
               message='a new %s with the reopen line' % log_path)
    old = read_text(rotated)
    assert SERVING in old
    assert 'log files reopened' not in old
    proc.signal(signal.SIGUSR2)
    wait_until(lambda: read_text(log_path).count('log files reopened') == 2,
               60, message='the second reopen line')
    proc.stop()
    new = read_text(log_path)
    assert 'stopping (SIGTERM)' in new and 'stopped' in new
    assert read_text(rotated) == old
    assert SERVING not in new   # the new file starts after the rename
