"""`ZcZrsSecondary`, a real zc.zrs 3.1.0 secondary.  It breaks on ZODB 6,
so it runs on ZODB 5.5.1 in a virtualenv of its own (`peer_python()`,
cached under `.venv-peers/`), served read-only by ZEO 5's runzeo.
"""
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys

from .process import LOG_FORMAT, Node, ROOT, wait_until, zeo_config

# The newest ZODB the zc.zrs secondary works with, a ZEO 5 to serve it
# and the rest, all pinned to wheels for Python 3.11.
PEER_REQUIREMENTS = tuple('''
    zc.zrs==3.1.0 ZODB==5.5.1 ZEO==5.4.1 Twisted==26.10.0 six==1.17.0
    BTrees==6.5 persistent==6.9 transaction==5.1 zodbpickle==4.5
    ZConfig==4.3 zc.lockfile==4.0 zdaemon==5.2.1 zope.interface==8.7
    zope.deferredimport==6.1.1 zope.proxy==7.3 attrs==26.1.0
    Automat==25.4.16 constantly==23.10.4 hyperlink==21.0.0 idna==3.20
    incremental==24.11.0 packaging==26.4 typing_extensions==4.16.0
    cffi==2.1.1 pycparser==3.12'''.split())

PEERS_DIR = os.path.join(ROOT, '.venv-peers')
ZCZRS_VENV = os.path.join(PEERS_DIR, 'zczrs-zodb551')


def _peer_env():
    """The environment for peer-venv processes: nothing of ours leaks in."""
    return {key: value for key, value in os.environ.items()
            if key not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}


def peer_python(venv=ZCZRS_VENV):
    """The python of the zc.zrs/ZODB 5.5.1 venv, built (under a lock) if
    missing or stale; the stamp written last says it is complete."""
    python = os.path.join(venv, 'bin', 'python')
    stamp = os.path.join(venv, '.requirements')
    base = os.path.realpath(getattr(sys, '_base_executable', sys.executable))
    wanted = 'python %s %s\n%s\n' % (
        base, sys.version.split()[0], '\n'.join(PEER_REQUIREMENTS))
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


# ZEO 5's runzeo serving a zc.zrs Secondary (not `%import zc.zrs`: that
# reconnects after 60 s, this after 1 s).
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


class ZcZrsSecondary(Node):
    """A zc.zrs secondary; `start(python)` with `peer_python()`."""

    log_format = LOG_FORMAT

    def __init__(self, directory, primary_port, name='zczrs-secondary',
                 register=None):
        super().__init__(directory, name, register)
        self.primary_port, self.python = primary_port, None
        self.script_path = os.path.join(self.directory, name + '.py')
        self.cwd = self.directory

    def environment(self):
        return _peer_env()

    def write_config(self):
        with open(self.script_path, 'w') as f:
            f.write(SECONDARY_SCRIPT)
        return super().write_config()

    def config(self):
        return zeo_config(self.zeo_port, self.fs_path, '  read-only true\n',
                          self.log_format)

    def command(self):
        return [self.python, self.script_path,
                '127.0.0.1:%d' % self.primary_port, '-C', self.config_path]

    def start(self, python, timeout=60.0):
        self.python = python
        return super().start(timeout)


def wait_for_tid(storage, tid, nodes, timeout=120.0):
    """Poll a ClientStorage until its last tid is `tid`; fail at once if
    one of `nodes` exited."""
    wait_until(lambda: all(node.check_alive() for node in nodes) and
               storage.lastTransaction() == tid, timeout,
               message='lastTransaction == %s' % tid.hex())
