"""When the ZEO port opens: after a replica's first transaction, unless
`serve-empty` is on (read-only ZEO clients cannot open a DB on an empty
storage)."""
import ZODB

from harness.process import free_port, port_open
from harness.zrsd_nodes import ZrsdNode


def test_replica_serves_after_its_first_transaction(tmp_path):
    primary = ZrsdNode(tmp_path, 'primary').launch()
    replica = ZrsdNode(tmp_path, 'replica',
                       upstream=primary.repl_port).launch()
    try:
        primary.wait_for_log(' over ZEO at ')  # a primary serves at once
        replica.wait_for_log('waiting for the first transaction of 1')
        # Connected to an empty primary, still not serving.
        replica.wait_for_log('connected (zrs2.0)')
        assert not port_open(replica.zeo_port)
        assert ' over ZEO at ' not in replica.log()

        db = primary.db()  # creates the root
        replica.wait_for_log(' over ZEO at ')
        reader = ZODB.DB(replica.client())
        with reader.transaction() as conn:
            assert conn.root() == {}
        reader.close()
        db.close()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]


def test_serve_empty_opens_at_once_and_sigterm_while_waiting(tmp_path):
    repl_port = free_port()  # nobody listens there
    eager = ZrsdNode(tmp_path, 'eager', upstream=repl_port,
                     zeo_lines='  serve-empty on\n').launch()
    waiting = ZrsdNode(tmp_path, 'waiting', upstream=repl_port).launch()
    try:
        eager.wait_for_log(' over ZEO at ')
        client = eager.client()
        assert client.lastTransaction() == b'\0' * 8
        client.close()
        waiting.wait_for_log('waiting for the first transaction')
    finally:
        statuses = [waiting.stop(), eager.stop()]
    assert statuses == [0, 0]
    assert 'stopping (SIGTERM)' in waiting.log()
    assert ' over ZEO at ' not in waiting.log()
