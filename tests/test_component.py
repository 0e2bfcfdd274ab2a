"""`%import zrsd` in plain ZEO (runzeo) configurations: a runzeo primary
and replica with zrsd's `<zrs>` section, as drop-ins for zc.zrs."""
from contextlib import closing

import ZODB

from harness.history import assert_same_history
from harness.process import stop_all
from harness.zrsd_nodes import RunzeoNode, opened, wait_for_value


def test_runzeo_primary_and_replica(tmp_path, processes):
    primary = RunzeoNode(tmp_path, 'primary', register=processes).start()
    replica = RunzeoNode(tmp_path, 'replica', upstream=primary.repl_port,
                         register=processes).start()
    with closing(primary.db()) as db, opened(db) as (tm, root):
        for i in range(20):
            root[i] = 'value %d' % i
            tm.commit()
        replica.wait_for_tid(db.lastTransaction())
        replica_db = ZODB.DB(replica.client())
        with closing(replica_db), opened(replica_db) as (replica_tm, copy):
            assert copy[19] == 'value 19'
            # A commit made now reaches the already-connected replica client.
            root['late'] = 'yes'
            tm.commit()
            wait_for_value(replica_tm, copy, 'late', 'yes')
    stop_all(replica, primary)
    assert assert_same_history(primary.fs_path, replica.fs_path) == 22
