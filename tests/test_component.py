"""`%import zrsd` inside a plain ZEO (runzeo) configuration.

A runzeo primary and a runzeo replica, both using zrsd's `<zrs>` storage
section, as drop-ins for zc.zrs inside an existing ZEO server.
"""
import os

import transaction
import ZEO
import ZODB

from support import (BIN, Process, assert_same_history, free_port,
                     wait_until)

CONFIG = '''\
%%import zrsd
<zeo>
  address 127.0.0.1:%(zeo_port)s
</zeo>
<zrs>
  %(role)s
  reconnect-delay 0.1
  <filestorage>
    path %(path)s
  </filestorage>
</zrs>
<eventlog>
  <logfile>
    path STDOUT
  </logfile>
</eventlog>
'''


def runzeo(tmp_path, name, role, zeo_port):
    path = str(tmp_path / ('%s.fs' % name))
    config = tmp_path / ('%s.conf' % name)
    config.write_text(CONFIG % dict(zeo_port=zeo_port, role=role, path=path))
    proc = Process([os.path.join(BIN, 'runzeo'), '-C', str(config)],
                   str(tmp_path / ('%s.log' % name)))
    proc.wait_for_log('listening on', 60)
    return proc, path


def test_runzeo_primary_and_replica(tmp_path):
    repl_port = free_port()
    primary_zeo, replica_zeo = free_port(), free_port()
    primary, primary_fs = runzeo(
        tmp_path, 'primary', 'replicate-to 127.0.0.1:%s' % repl_port,
        primary_zeo)
    replica, replica_fs = runzeo(
        tmp_path, 'replica', 'replicate-from 127.0.0.1:%s' % repl_port,
        replica_zeo)
    try:
        db = ZEO.DB(('127.0.0.1', primary_zeo))
        conn = db.open()
        for i in range(20):
            conn.root()[i] = 'value %d' % i
            transaction.commit()

        client = ZEO.client(('127.0.0.1', replica_zeo), read_only=True)
        replica_db = ZODB.DB(client)
        tm = transaction.TransactionManager()
        replica_conn = replica_db.open(tm)
        wait_until(lambda: client.lastTransaction() == db.lastTransaction(),
                   message='replica caught up')
        tm.begin()
        assert replica_conn.root()[19] == 'value 19'

        # A commit made now reaches the already-connected replica client.
        conn.root()['late'] = 'yes'
        transaction.commit()

        def seen():
            tm.begin()
            return replica_conn.root().get('late') == 'yes'
        wait_until(seen, message='late commit on the replica')
        replica_db.close()
        db.close()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0], (statuses, replica.log() + primary.log())
    assert assert_same_history(primary_fs, replica_fs) == 22
