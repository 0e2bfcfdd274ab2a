"""Shared fixtures: a populated zc.zrs primary history per session and a
running copy per test, `processes` (closed, logs shown on failure) and
`node` (zrsd nodes registered there)."""
import pytest

from harness import zczrs
from harness.history import Populated
from harness.zrsd_nodes import ZrsdNode


@pytest.fixture(scope='session')
def zczrs_populated(tmp_path_factory):
    primary = zczrs.ZcZrsPrimary(tmp_path_factory.mktemp('zczrs-populated'))
    try:
        zczrs.populate(primary.start().zeo_address)
        primary.stop()
    finally:
        primary.close()
    return Populated(primary.fs_path)


def _closing(failed):
    """Register objects with .close() and .log(): closed at the end, the
    tail of their logs printed if `failed()`."""
    registered = []
    yield registered.append
    for proc in registered:
        proc.close()
        if failed():
            lines = proc.log().splitlines()[-80:]
            print('\n==== last %d lines of %s ====\n%s' % (
                len(lines), getattr(proc, 'log_path', proc), '\n'.join(lines)))


@pytest.fixture
def processes(request):
    """Processes closed after the test (see `_closing`)."""
    yield from _closing(lambda: getattr(request.node, 'zrsd_failed', False))


@pytest.fixture(scope='module')
def module_processes(request):
    """Processes of module fixtures: closed after the module's tests."""
    failed = request.session.testsfailed
    yield from _closing(lambda: request.session.testsfailed > failed)


@pytest.fixture
def node(tmp_path, processes):
    """node(name, **options): an unstarted `ZrsdNode` in its own directory
    (`tmp_path/name`), registered with `processes`."""
    return lambda name, **kw: ZrsdNode(tmp_path / name, name,
                                       register=processes, **kw)


@pytest.fixture
def zczrs_primary(zczrs_populated, tmp_path, processes):
    """A running zc.zrs primary on a private copy of the populated history."""
    return zczrs_populated.copy_to(zczrs.ZcZrsPrimary(
        tmp_path / 'primary', register=processes)).start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        item.zrsd_failed = True
