"""`make demo`: a zrsd primary, a zrsd replica and ZEO clients.

Works in var/demo/ (recreated on each run, git-ignored) with the sample
configs etc/demo/primary.conf and etc/demo/replica.conf (fixed ports on
127.0.0.1: primary ZEO 8100, replication 8101, replica ZEO 8200).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import transaction
import ZEO
import ZEO.ClientStorage
import ZODB
import ZODB.FileStorage
from persistent.mapping import PersistentMapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
WORK = os.path.join(ROOT, 'var', 'demo')
ETC = os.path.join(ROOT, 'etc', 'demo')
PORTS = [(8100, 'primary ZEO'), (8101, 'primary replication'),
         (8200, 'replica ZEO')]
PRIMARY, REPLICA = ('127.0.0.1', 8100), ('127.0.0.1', 8200)


class DemoError(Exception):
    pass


def step(text):
    print('\n==> ' + text, flush=True)


def wait_for(predicate, what, timeout=30.0):
    """Poll until predicate() is true; DemoError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError('timed out after %ss waiting for %s' % (timeout, what))
        time.sleep(0.05)


def port_open(port):
    try:
        socket.create_connection(('127.0.0.1', port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Server:
    """A server subprocess running in WORK with its output in NAME.log."""

    def __init__(self, name, args):
        self.name, self.log_path = name, os.path.join(WORK, name + '.log')
        print('    $ cd var/demo && %s' % ' '.join(
            os.path.relpath(a, WORK) if a.startswith(ROOT) else a for a in args))
        with open(self.log_path, 'wb') as log:
            self.popen = subprocess.Popen(args, cwd=WORK, stdout=log,
                                          stderr=subprocess.STDOUT)

    def wait_log(self, text):
        """Wait until the server logs `text` (e.g. that it listens)."""
        def logged():
            with open(self.log_path, 'rb') as f:
                return text.encode() in f.read()
        wait_for(lambda: self.popen.poll() is not None or logged(),
                 '%s to log %r' % (self.name, text))
        if self.popen.poll() is not None:
            raise DemoError('%s exited with status %s' % (
                self.name, self.popen.returncode))

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise DemoError('%s did not stop within 30s of SIGTERM' % self.name)

    def tail(self, lines=25):
        with open(self.log_path, 'rb') as f:
            text = f.read().decode('utf-8', 'replace').splitlines()[-lines:]
        return '\n'.join('    | ' + line for line in text)


def make_sample_database(path):
    db = ZODB.DB(ZODB.FileStorage.FileStorage(path))
    with db.transaction('demo: add some books') as conn:
        conn.root()['books'] = books = PersistentMapping()
        books['0-201-63361-2'] = 'Design Patterns'
        books['0-13-110362-8'] = 'The C Programming Language'
        books['0-262-51087-1'] = 'Structure and Interpretation of Computer Programs'
    last = db.storage.lastTransaction()
    db.close()
    return last


def show_books(root):
    for isbn, title in sorted(root['books'].items()):
        print('      %s  %s' % (isbn, title))


def demo(servers):
    step('Creating a sample primary database var/demo/primary.fs')
    last = make_sample_database(os.path.join(WORK, 'primary.fs'))
    print('    last transaction: %s' % last.hex())

    step('Starting the zrsd primary (etc/demo/primary.conf, ZEO on 8100, '
         'replication on 8101)')
    primary = Server('primary', [os.path.join(BIN, 'zrsd'), '-C',
                                 os.path.join(ETC, 'primary.conf')])
    servers.append(primary)
    primary.wait_log('serving ZRS to secondaries')
    primary.wait_log(' over ZEO at ')

    step('Starting the zrsd replica (etc/demo/replica.conf, ZEO on 8200)')
    replica = Server('replica', [os.path.join(BIN, 'zrsd'), '-C',
                                 os.path.join(ETC, 'replica.conf')])
    servers.append(replica)
    replica.wait_log(' over ZEO at ')

    step('Reading the replica with a read-only ZEO client')
    storage = ZEO.ClientStorage.ClientStorage(REPLICA, read_only=True,
                                              wait_timeout=30)
    wait_for(lambda: storage.lastTransaction() >= last,
             'the replica to catch up with the primary')
    reader = ZODB.DB(storage)
    tm = transaction.TransactionManager()
    root = reader.open(tm).root()
    print('    replica is at %s; books:' % storage.lastTransaction().hex())
    show_books(root)

    step('Committing a change on the primary (ZEO client on 8100)')
    writer = ZEO.DB(PRIMARY)
    with writer.transaction('demo: one more book') as conn:
        conn.root()['books']['0-13-468599-1'] = 'The Practice of Programming'
    started = time.monotonic()
    print('    committed %s' % writer.storage.lastTransaction().hex())
    writer.close()

    step('Waiting for the change to appear on the replica')

    def replicated():
        tm.begin()  # a new transaction sees the invalidations ZEO delivered
        return '0-13-468599-1' in root['books']
    wait_for(replicated, 'the new book on the replica')
    print('    seen on the replica %.1f ms after the commit returned; books:'
          % ((time.monotonic() - started) * 1000))
    show_books(root)
    reader.close()

    step('Stopping the replica, then the primary (SIGTERM)')
    for server in reversed(servers):
        status = server.stop()
        print('    %s exited with status %s' % (server.name, status))
        if status != 0:
            raise DemoError('%s exited with status %s' % (server.name, status))


def main():
    busy = [(p, what) for p, what in PORTS if port_open(p)]
    if busy:
        for port, what in busy:
            print('demo: port %s (%s) on 127.0.0.1 is already in use.' % (port, what))
        print('demo: stop whatever listens there (an earlier demo?) and retry.')
        return 2
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    servers = []
    try:
        demo(servers)
    except Exception as e:
        print('\ndemo FAILED: %s: %s' % (type(e).__name__, e))
        for server in servers:
            print('\n--- last lines of var/demo/%s.log ---' % server.name)
            print(server.tail())
        return 1
    finally:  # never leave a server behind (failure, Ctrl-C)
        for server in servers:
            if server.popen.poll() is None:
                server.popen.kill()
                server.popen.wait()
    print('\nDemo finished; logs and files are in var/demo/.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
