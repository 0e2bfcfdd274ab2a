"""`make demo`: a zrsd primary, a zrsd replica and ZEO clients.

Works in var/demo/ (recreated on each run, git-ignored) with the sample
configs etc/demo/primary.conf and etc/demo/replica.conf (fixed ports on
127.0.0.1: primary ZEO 8100, replication 8101, replica ZEO 8200).
"""
import os
import shutil
import sys
import time

import transaction
import ZEO
import ZODB
from persistent.mapping import PersistentMapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from harness.process import port_open, wait_until  # noqa: E402
from harness.zrsd_nodes import ZrsdNode  # noqa: E402

WORK = os.path.join(ROOT, 'var', 'demo')
PORTS = [(8100, 'primary ZEO'), (8101, 'primary replication'),
         (8200, 'replica ZEO')]
PRIMARY, REPLICA = ('127.0.0.1', 8100), ('127.0.0.1', 8200)
BOOKS = {'0-201-63361-2': 'Design Patterns',
         '0-13-110362-8': 'The C Programming Language',
         '0-262-51087-1': 'Structure and Interpretation of Computer Programs'}


class DemoNode(ZrsdNode):
    """A zrsd of the demo, run in var/demo/ on its etc/demo/ config (a
    replica's `upstream` only says what the node waits for at start)."""

    cwd = WORK

    def __init__(self, name, upstream=None):
        super().__init__(WORK, name, upstream)
        self.config_path = os.path.join(ROOT, 'etc', 'demo', name + '.conf')

    def write_config(self):
        return self.config_path

    def start(self, nodes):
        """Start it (on the list of `nodes` to stop), showing the command."""
        nodes.append(self)
        print('    $ cd var/demo && %s' % ' '.join(
            os.path.relpath(a, WORK) if a.startswith(ROOT) else a
            for a in self.command()))
        return super().start(30)


def step(text):
    print('\n==> ' + text, flush=True)


def show_books(root):
    for isbn, title in sorted(root['books'].items()):
        print('      %s  %s' % (isbn, title))


def demo(nodes):
    step('Creating a sample primary database var/demo/primary.fs')
    db = ZODB.DB(os.path.join(WORK, 'primary.fs'))
    with db.transaction('demo: add some books') as conn:
        conn.root()['books'] = PersistentMapping(BOOKS)
    last = db.storage.lastTransaction()
    db.close()
    print('    last transaction: %s' % last.hex())

    step('Starting the zrsd primary (etc/demo/primary.conf, ZEO on 8100, '
         'replication on 8101)')
    DemoNode('primary').start(nodes)
    step('Starting the zrsd replica (etc/demo/replica.conf, ZEO on 8200)')
    DemoNode('replica', 8101).start(nodes)

    step('Reading the replica with a read-only ZEO client')
    storage = ZEO.client(REPLICA, read_only=True, wait_timeout=30)
    wait_until(lambda: storage.lastTransaction() >= last, 30,
               message='the replica to catch up with the primary')
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
    wait_until(replicated, 30, message='the new book on the replica')
    print('    seen on the replica %.1f ms after the commit returned; books:'
          % ((time.monotonic() - started) * 1000))
    show_books(root)
    reader.close()

    step('Stopping the replica, then the primary (SIGTERM)')
    for node in reversed(nodes):   # a status but 0 fails
        print('    %s exited with status %s' % (node.name, node.stop(30)))


def main():
    busy = ['%d (%s)' % (port, what) for port, what in PORTS
            if port_open(port)]
    if busy:
        print('demo: port(s) %s on 127.0.0.1 already in use: stop whatever '
              'listens there (an earlier demo?) and retry.' % ', '.join(busy))
        return 2
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    nodes = []
    try:
        demo(nodes)
    except Exception as e:
        print('\ndemo FAILED: %s: %s' % (type(e).__name__, e))
        for node in nodes:
            print('\n--- last lines of %s ---' % os.path.relpath(
                node.log_path, ROOT))
            print('\n'.join('    | ' + line
                            for line in node.log().splitlines()[-25:]))
        return 1
    finally:  # never leave a server behind (failure, Ctrl-C)
        for node in nodes:
            node.close()
    print('\nDemo finished; logs and files are in var/demo/.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
