"""`%import zrsd` inside a plain ZEO (runzeo) configuration.

A runzeo primary and a runzeo replica, both using zrsd's `<zrs>` storage
section, as drop-ins for zc.zrs inside an existing ZEO server.
"""
import transaction
import ZODB

from harness.history import assert_same_history
from harness.process import wait_until
from harness.zrsd_nodes import RunzeoNode


def test_runzeo_primary_and_replica(tmp_path):
    primary = RunzeoNode(tmp_path, 'primary').start()
    replica = RunzeoNode(tmp_path, 'replica',
                         upstream=primary.repl_port).start()
    try:
        db = primary.db()
        conn = db.open()
        for i in range(20):
            conn.root()[i] = 'value %d' % i
            transaction.commit()

        client = replica.client()
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
    assert assert_same_history(primary.fs_path, replica.fs_path) == 22
