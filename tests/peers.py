"""Other ZRS peers for interoperability and hostile-peer tests.

- `ZrsdPrimary`: a zrsd primary (`<zrs>` with `replicate-to`) started from a
  config file, optionally with a blob directory.
- `ZcZrsSecondary`: a real zc.zrs 3.1.0 *secondary*.  zc.zrs's secondary
  breaks on ZODB 6 (at `tpc_begin`), so it runs on ZODB 5.5.1 in a
  virtualenv of its own, built on first use by `peer_python()` and cached
  under `.venv-peers/` (rebuilt when `PEER_REQUIREMENTS` or the base Python
  change).  It is served by ZEO 5's `runzeo` from that venv, read-only, so
  the tests read its last tid with an ordinary ZEO client.
- `BlobZcZrsPrimary`: the zc.zrs primary of `zczrs.ZcZrsPrimary` with a
  `blob-dir` (it then speaks zrs2.1 to secondaries with blobs).

zc.zrs is never imported in the test process (see DESIGN.md): both zc.zrs
roles run in subprocesses.
"""
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys

import ZEO

import zczrs
from support import BIN, ROOT, Process, free_port, wait_until

# The zc.zrs secondary's world: the newest ZODB it works with (5.5.1), a
# ZEO 5 to serve it, and versions of the rest that install from wheels on
# Python 3.11.  Fully pinned, so a fresh machine builds the same venv.
PEER_REQUIREMENTS = (
    'zc.zrs==3.1.0',
    'ZODB==5.5.1',
    'ZEO==5.4.1',
    'Twisted==26.10.0',
    'six==1.17.0',
    'BTrees==6.5',
    'persistent==6.9',
    'transaction==5.1',
    'zodbpickle==4.5',
    'ZConfig==4.3',
    'zc.lockfile==4.0',
    'zdaemon==5.2.1',
    'zope.interface==8.7',
    'zope.deferredimport==6.1.1',
    'zope.proxy==7.3',
    'attrs==26.1.0',
    'Automat==25.4.16',
    'constantly==23.10.4',
    'hyperlink==21.0.0',
    'idna==3.20',
    'incremental==24.11.0',
    'packaging==26.4',
    'typing_extensions==4.16.0',
    'cffi==2.1.1',
    'pycparser==3.12',
)

PEERS_DIR = os.path.join(ROOT, '.venv-peers')
ZCZRS_VENV = os.path.join(PEERS_DIR, 'zczrs-zodb551')


def _stamp_text():
    """What the cached venv was built from: base Python and requirements."""
    base = os.path.realpath(getattr(sys, '_base_executable', sys.executable))
    return 'python %s %s\n%s\n' % (
        base, sys.version.split()[0], '\n'.join(PEER_REQUIREMENTS))


def _peer_env():
    """The environment for peer-venv processes: nothing of ours leaks in."""
    env = dict(os.environ)
    for key in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV'):
        env.pop(key, None)
    return env


def peer_python(venv=ZCZRS_VENV):
    """The python of the zc.zrs/ZODB 5.5.1 venv, built if missing or stale.

    A lock file keeps concurrent test runs from building it twice; the stamp
    is written last, so an interrupted build is redone.
    """
    python = os.path.join(venv, 'bin', 'python')
    stamp = os.path.join(venv, '.requirements')
    wanted = _stamp_text()
    os.makedirs(PEERS_DIR, exist_ok=True)
    with open(venv + '.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError), open(stamp) as f:
            if f.read() == wanted and os.access(python, os.X_OK):
                return python
        shutil.rmtree(venv, ignore_errors=True)
        _run([sys.executable, '-m', 'venv', venv])
        _run([python, '-m', 'pip', 'install', '--disable-pip-version-check',
              '--no-input', '-q'] + list(PEER_REQUIREMENTS))
        with open(stamp, 'w') as f:
            f.write(wanted)
    return python


def _run(args):
    done = subprocess.run(args, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=_peer_env())
    if done.returncode:
        raise RuntimeError('%s failed with status %s:\n%s' % (
            ' '.join(args), done.returncode,
            done.stdout.decode('utf-8', 'replace')))


LOG_SECTION = """\
<eventlog>
  level INFO
  <logfile>
    path STDOUT
    format %(asctime)s %(levelname)s %(name)s %(message)s
  </logfile>
</eventlog>
"""

# Run in the peer venv: ZEO 5's runzeo serving a zc.zrs Secondary built
# around the configured <filestorage>.  Built here rather than with
# `%import zc.zrs` so that the reconnect delay is 1 s, not zc.zrs's 60 s.
SECONDARY_SCRIPT = '''\
import sys

import ZEO.runzeo
import zc.zrs.secondary

host, port = sys.argv[1].rsplit(":", 1)
primary = (host, int(port))


class SecondaryServer(ZEO.runzeo.ZEOServer):

    def open_storages(self):
        super().open_storages()
        self.storages = {
            name: zc.zrs.secondary.Secondary(
                storage, primary, reconnect_delay=1)
            for name, storage in self.storages.items()}


options = ZEO.runzeo.ZEOOptions()
options.realize(sys.argv[2:])
SecondaryServer(options).main()
'''

SECONDARY_CONFIG = """\
<zeo>
  address 127.0.0.1:%(zeo_port)s
  read-only true
</zeo>
<filestorage 1>
  path %(fs_path)s
</filestorage>
""" + LOG_SECTION.replace('%', '%%')


class ZcZrsSecondary:
    """A zc.zrs 3.1.0 secondary on ZODB 5.5.1, served read-only by ZEO 5."""

    def __init__(self, directory, primary_port, name='zczrs-secondary'):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.primary_port = primary_port
        self.fs_path = os.path.join(self.directory, name + '.fs')
        self.config_path = os.path.join(self.directory, name + '.conf')
        self.script_path = os.path.join(self.directory, name + '.py')
        self.log_path = os.path.join(self.directory, name + '.log')
        self.zeo_port = free_port()
        self.process = None

    def start(self, python, timeout=60.0):
        with open(self.script_path, 'w') as f:
            f.write(SECONDARY_SCRIPT)
        with open(self.config_path, 'w') as f:
            f.write(SECONDARY_CONFIG % dict(zeo_port=self.zeo_port,
                                            fs_path=self.fs_path))
        self.process = Process(
            [python, self.script_path, '127.0.0.1:%d' % self.primary_port,
             '-C', self.config_path],
            self.log_path, env=_peer_env(), cwd=self.directory)
        self.process.wait_for_log(
            "listening on ('127.0.0.1', %d)" % self.zeo_port, timeout)
        return self

    def client(self):
        """A read-only ZEO 6 ClientStorage of the secondary."""
        return ZEO.client(('127.0.0.1', self.zeo_port), read_only=True)

    def stop(self, timeout=60.0):
        return self.process.stop(timeout)

    def close(self):
        if self.process is not None:
            self.process.close()

    def log(self):
        return self.process.log() if self.process is not None else ''


PRIMARY_CONFIG = """\
<zeo>
  address 127.0.0.1:%(zeo_port)s
</zeo>
<zrs 1>
  replicate-to 127.0.0.1:%(repl_port)s
  handshake-timeout %(handshake_timeout)s
  <filestorage>
    path %(fs_path)s
%(blob)s  </filestorage>
</zrs>
""" + LOG_SECTION.replace('%', '%%')


class ZrsdPrimary:
    """A zrsd primary (`replicate-to`) in a subprocess."""

    def __init__(self, directory, name='zrsd-primary', blobs=False,
                 handshake_timeout=2):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.name = name
        self.fs_path = os.path.join(self.directory, name + '.fs')
        self.blob_dir = (os.path.join(self.directory, name + '.blobs')
                         if blobs else None)
        self.config_path = os.path.join(self.directory, name + '.conf')
        self.log_path = os.path.join(self.directory, name + '.log')
        self.handshake_timeout = handshake_timeout
        self.zeo_port = free_port()
        self.repl_port = free_port()
        self.process = None

    @property
    def zeo_address(self):
        return ('127.0.0.1', self.zeo_port)

    @property
    def pid(self):
        return self.process.pid

    def start(self, timeout=60.0):
        blob = '    blob-dir %s\n' % self.blob_dir if self.blob_dir else ''
        with open(self.config_path, 'w') as f:
            f.write(PRIMARY_CONFIG % dict(
                zeo_port=self.zeo_port, repl_port=self.repl_port,
                handshake_timeout=self.handshake_timeout,
                fs_path=self.fs_path, blob=blob))
        self.process = Process(
            [os.path.join(BIN, 'zrsd'), '-C', self.config_path],
            self.log_path)
        self.process.wait_for_log(' over ZEO at ', timeout)
        self.process.wait_for_log(
            'serving ZRS to secondaries at 127.0.0.1:%d' % self.repl_port,
            timeout)
        return self

    def running(self):
        return self.process is not None and self.process.popen.poll() is None

    def client(self, **kw):
        return ZEO.client(self.zeo_address, **kw)

    def last_tid(self):
        storage = self.client(read_only=True)
        try:
            return storage.lastTransaction()
        finally:
            storage.close()

    def stop(self, timeout=60.0):
        return self.process.stop(timeout)

    def close(self):
        if self.process is not None:
            self.process.close()

    def log(self):
        return self.process.log() if self.process is not None else ''


class BlobZcZrsPrimary(zczrs.ZcZrsPrimary):
    """A zc.zrs 3.1 primary (under ZEO 6's runzeo) with a blob directory."""

    def __init__(self, directory, name='primary'):
        super().__init__(directory, name)
        self.blob_dir = os.path.join(self.directory, name + '.blobs')

    def write_config(self):
        path_line = '    path %(fs_path)s\n'
        assert zczrs.CONFIG.count(path_line) == 1, zczrs.CONFIG
        template = zczrs.CONFIG.replace(
            path_line, path_line + '    blob-dir %(blob_dir)s\n')
        with open(self.config_path, 'w') as f:
            f.write(template % dict(
                zeo_port=self.zeo_port, repl_port=self.repl_port,
                fs_path=self.fs_path, blob_dir=self.blob_dir))
        return self.config_path


def wait_for_tid(storage, tid, processes, timeout=120.0, message=None):
    """Poll a ClientStorage until its last tid is `tid`.

    Fails at once, with the log, if one of `processes` (objects with a
    `.process` or `.popen`) exited meanwhile.
    """
    def reached():
        for proc in processes:
            popen = getattr(proc, 'popen', None) or proc.process.popen
            if popen.poll() is not None:
                raise AssertionError('%s exited with %s:\n%s' % (
                    popen.args, popen.returncode, proc.log()))
        return storage.lastTransaction() == tid
    wait_until(reached, timeout, message=message or
               'lastTransaction == %s' % tid.hex())
