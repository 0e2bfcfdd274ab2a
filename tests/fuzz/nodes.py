"""The zrsd processes of a run: `Replica`, `started` (so that an
interrupted run leaves no daemon behind) and `stop`."""
from harness.zrsd_nodes import ZrsdNode

IO_TIMEOUT = 60.0                   # seconds before a peer counts as hung

_STARTED = []
started = _STARTED.append   # a node's `register`: close_all() kills it


def close_all():
    """Kill whatever registered process still runs."""
    for peer in _STARTED:
        peer.close()
    del _STARTED[:]


class Replica(ZrsdNode):
    """A zrsd replica of port `upstream`, registered, as the fuzzer needs
    it: no keep-alives, ZEO served before the first transaction, always a
    reconnection after 0.1 s (a case per connection: a growing back-off
    would slow every case down), and logging at DEBUG (zrsd logs a
    repeated apply failure at DEBUG; the judges look)."""

    log_level, zrs_lines = 'DEBUG', '  keep-alive-delay 0\n'
    zeo_lines = '  serve-empty true\n'

    def __init__(self, directory, upstream, blobs=False):
        super().__init__(directory, 'replica', upstream, blobs=blobs,
                         register=started)

    def config(self):
        text, old = super().config(), '  max-reconnect-delay 1\n'
        assert text.count(old) == 1, text
        return text.replace(old, '  max-reconnect-delay 0.1\n')


def stop(lane, name, process):
    """SIGTERM `process` if it runs (it must exit with status 0); returns
    the status, None if it had exited."""
    alive = process.popen.poll() is None
    status = process.stop(IO_TIMEOUT) if alive else None
    process.close()
    if alive and status != 0:
        lane.violation('daemon crashes', 'the %s exited with status %s on '
                       'SIGTERM' % (name, status))
    return status
