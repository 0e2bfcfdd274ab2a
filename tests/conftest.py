"""Shared pytest fixtures for the integration tests.

`zczrs_populated` builds one zc.zrs primary history per session (the slow
part: thousands of ZEO commits); `zczrs_primary` gives each test its own
running zc.zrs primary on a copy of it, so tests cannot disturb each other.
`processes` closes (and, when a test failed, shows the logs of) the processes
a test registers.
"""
import os

import pytest

from harness import zczrs
from harness.history import transactions


class PopulatedPrimary:
    """A stopped zc.zrs primary holding the `populate()` history.

    `history` is `transactions()` of its file; `oids` every oid that
    appears in it (sorted); `data_bytes` the total record data size.
    """

    def __init__(self, primary, result):
        self.primary = primary
        self.result = result
        self.fs_path = primary.fs_path
        self.fs_size = os.path.getsize(primary.fs_path)
        self.history = transactions(primary.fs_path)
        self.last_tid = self.history[-1][0]
        self.oids = sorted({record[0] for txn in self.history
                            for record in txn[5]})
        self.data_bytes = sum(len(record[2] or b'') for txn in self.history
                              for record in txn[5])

    def copy_to(self, directory):
        return self.primary.copy_to(directory)


@pytest.fixture(scope='session')
def zczrs_populated(tmp_path_factory):
    """One populated, stopped zc.zrs primary shared by the session."""
    directory = tmp_path_factory.mktemp('zczrs-populated')
    primary = zczrs.ZcZrsPrimary(directory)
    primary.start()
    try:
        result = zczrs.populate(primary.zeo_address)
    except BaseException:
        primary.close()
        raise
    primary.stop()
    return PopulatedPrimary(primary, result)


@pytest.fixture
def processes(request):
    """Register `Process`-like objects (with .close() and .log()).

    At teardown each is closed (killed if still running); if the test failed
    the tail of each log is printed, so it shows in the failure report.
    """
    registered = []
    yield registered.append
    failed = getattr(request.node, 'zrsd_failed', False)
    for proc in registered:
        proc.close()
        if failed:
            lines = proc.log().splitlines()[-80:]
            print('\n==== last %d lines of %s ====' % (
                len(lines), getattr(proc, 'log_path', proc)))
            print('\n'.join(lines))


@pytest.fixture
def zczrs_primary(zczrs_populated, tmp_path, processes):
    """A running zc.zrs primary on a private copy of the populated history."""
    primary = zczrs_populated.copy_to(tmp_path / 'primary')
    primary.register = processes
    return primary.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.zrsd_failed = True
