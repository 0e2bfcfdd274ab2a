"""Helpers shared by the integration tests: ports, processes, polling, comparisons.

Everything here drives real components: real sockets on 127.0.0.1, real `zrsd`
processes started from config files, real FileStorages.
"""
import os
import signal
import struct
import socket
import subprocess
import sys
import time

import ZODB.FileStorage

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=60.0, interval=0.05, message=None):
    """Poll `predicate` until it returns a true value or `timeout` passes.

    Returns the true value; raises AssertionError naming `message` on timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                'timed out after %ss waiting for %s' % (
                    timeout, message or predicate))
        time.sleep(interval)


def port_open(port, host='127.0.0.1'):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Process:
    """A child process whose combined output goes to a log file."""

    def __init__(self, args, log_path, env=None, cwd=None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, 'ab')
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd)

    @property
    def pid(self):
        return self.popen.pid

    def log(self):
        with open(self.log_path, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def wait_for_log(self, text, timeout=60.0, start=0):
        """Wait until `text` appears in the log (after offset `start`)."""
        def seen():
            if self.popen.poll() is not None and text not in self.log()[start:]:
                raise AssertionError(
                    '%s exited with %s before logging %r:\n%s' % (
                        self.args, self.popen.returncode, text, self.log()))
            return text in self.log()[start:]
        wait_until(seen, timeout, message='%r in %s' % (text, self.log_path))

    def signal(self, signum):
        self.popen.send_signal(signum)

    def stop(self, timeout=60.0):
        """SIGTERM and wait; returns the exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        finally:
            self._log.close()

    def kill(self):
        """SIGKILL and wait (no clean-up happens in the child)."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)
        self._log.close()

    def close(self):
        """Make sure the process is gone (for fixture finalisers)."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(30)
        self._log.close()


def zrsd_config(tmp_path, zeo_port, primary_port, name='replica',
                extra='', storage_name='1', blob_dir=None):
    """Write a zrsd config for one replica storage; returns (path, fs_path)."""
    fs_path = str(tmp_path / ('%s.fs' % name))
    blob = '    blob-dir %s\n' % blob_dir if blob_dir else ''
    text = (
        '<zeo>\n'
        '  address 127.0.0.1:%(zeo_port)s\n'
        '</zeo>\n'
        '<zrs %(storage_name)s>\n'
        '  replicate-from 127.0.0.1:%(primary_port)s\n'
        '  reconnect-delay 0.1\n'
        '  max-reconnect-delay 1\n'
        '%(extra)s'
        '  <filestorage>\n'
        '    path %(fs_path)s\n'
        '%(blob)s'
        '  </filestorage>\n'
        '</zrs>\n'
        '<eventlog>\n'
        '  level INFO\n'
        '  <logfile>\n'
        '    path STDOUT\n'
        '    format %%(asctime)s %%(levelname)s %%(name)s %%(message)s\n'
        '  </logfile>\n'
        '</eventlog>\n') % dict(
            zeo_port=zeo_port, primary_port=primary_port, extra=extra,
            fs_path=fs_path, blob=blob, storage_name=storage_name)
    path = tmp_path / ('%s.conf' % name)
    path.write_text(text)
    return str(path), fs_path


def start_zrsd(config_path, log_path, zeo_port=None):
    """Start `zrsd -C config_path`; wait until it says it serves ZEO.

    Waiting for the log line rather than probing the port keeps ZEO from
    logging a reset connection for the probe.
    """
    proc = Process([os.path.join(BIN, 'zrsd'), '-C', config_path], log_path)
    if zeo_port is not None:
        proc.wait_for_log(' over ZEO at ', 60)
    return proc


def transactions(path):
    """Read a FileStorage (read-only) into a list of comparable tuples.

    Each transaction is (tid, status, user, description, extension,
    [(oid, tid, data, data_txn), ...]).
    """
    return list(iter_transactions(path))


def iter_transactions(path):
    """`transactions(path)` one at a time (for files too big to hold in
    memory twice); the storage closes when the iteration ends or the
    generator is closed."""
    fs = ZODB.FileStorage.FileStorage(path, read_only=True)
    try:
        for txn in fs.iterator():
            records = [(r.oid, r.tid, r.data, r.data_txn) for r in txn]
            yield (txn.tid, txn.status, txn.user, txn.description,
                   dict(txn.extension), records)
    finally:
        fs.close()


def assert_same_history(primary_path, replica_path):
    """The replica file holds exactly the primary's transactions.

    Returns the number of transactions compared.
    """
    primary = transactions(primary_path)
    replica = transactions(replica_path)
    assert [t[0] for t in replica] == [t[0] for t in primary], (
        'tid lists differ: primary %d txns, replica %d txns' % (
            len(primary), len(replica)))
    for p, r in zip(primary, replica):
        assert r == p, 'transaction %s differs' % p[0].hex()
    return len(primary)


def handshake_frames(data):
    """(protocol name, start tid) from the bytes a secondary sent so far,
    or None while its two handshake frames are not complete."""
    frames = []
    while len(frames) < 2:
        if len(data) < 4:
            return None
        (size,) = struct.unpack('>I', data[:4])
        if len(data) < 4 + size:
            return None
        frames.append(data[4:4 + size])
        data = data[4 + size:]
    return tuple(frames)
