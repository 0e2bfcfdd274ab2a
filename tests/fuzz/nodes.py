"""The zrsd processes of a run: the harness's replica config made for the
fuzzer, and a registry so that an interrupted run leaves no daemon behind."""
import os

from harness import zrsd_nodes
from harness.process import BIN, Process

IO_TIMEOUT = 60.0                   # seconds before a peer counts as hung

ZRSD = os.path.join(BIN, 'zrsd')

# What the fuzzer changes in the harness's replica config: serve ZEO before
# the first transaction arrives, always reconnect after 0.1 s (a case per
# connection: a growing back-off would slow every case down), and log at
# DEBUG (zrsd logs a repeated apply failure at DEBUG; the judges look).
_REPLICA_CHANGES = (
    ('</zeo>\n', '  serve-empty true\n</zeo>\n'),
    ('  max-reconnect-delay 1\n', '  max-reconnect-delay 0.1\n'),
    ('  level INFO\n', '  level DEBUG\n'),
)

_STARTED = []


def started(peer):
    """Register a `Process` or a `Node`."""
    _STARTED.append(peer)
    return peer


def close_all():
    """Kill whatever registered process still runs."""
    for peer in _STARTED:
        peer.close()
    del _STARTED[:]


def start_replica(directory, zeo_port, primary_port, blob_dir=None):
    """Start a zrsd replica of `primary_port` on `directory/replica.fs`
    (logging to `directory/replica.log`), without keep-alives."""
    text = zrsd_nodes.config_text(
        zeo_port, os.path.join(directory, 'replica.fs'),
        replicate_from=primary_port, blob_dir=blob_dir,
        zrs_lines='  keep-alive-delay 0\n')
    for old, new in _REPLICA_CHANGES:
        assert text.count(old) == 1, (old, text)
        text = text.replace(old, new)
    config = os.path.join(directory, 'replica.conf')
    with open(config, 'w') as f:
        f.write(text)
    return started(Process(
        [ZRSD, '-C', config], os.path.join(directory, 'replica.log')))
