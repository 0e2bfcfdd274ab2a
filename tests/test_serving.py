"""When the ZEO port opens: after a replica's first transaction, unless
`serve-empty` is on (read-only ZEO clients cannot open a DB on an empty
storage)."""
import os

import ZEO
import ZODB

from support import BIN, Process, free_port, port_open

CONFIG = '''\
<zeo>
  address 127.0.0.1:%(zeo_port)s
%(zeo_extra)s
</zeo>
<zrs 1>
  %(role)s
  reconnect-delay 0.1
  <filestorage>
    path %(path)s
  </filestorage>
</zrs>
'''


def start(tmp_path, name, role, zeo_extra=''):
    zeo_port = free_port()
    config = tmp_path / ('%s.conf' % name)
    config.write_text(CONFIG % dict(zeo_port=zeo_port, role=role,
                                    zeo_extra=zeo_extra,
                                    path=tmp_path / ('%s.fs' % name)))
    proc = Process([os.path.join(BIN, 'zrsd'), '-C', str(config)],
                   str(tmp_path / ('%s.log' % name)))
    return proc, zeo_port


def test_replica_serves_after_its_first_transaction(tmp_path):
    repl_port = free_port()
    primary, primary_zeo = start(tmp_path, 'primary',
                                 'replicate-to 127.0.0.1:%s' % repl_port)
    replica, replica_zeo = start(tmp_path, 'replica',
                                 'replicate-from 127.0.0.1:%s' % repl_port)
    try:
        primary.wait_for_log(' over ZEO at ')  # a primary serves at once
        replica.wait_for_log('waiting for the first transaction of 1')
        # Connected to an empty primary, still not serving.
        replica.wait_for_log('connected (zrs2.0)')
        assert not port_open(replica_zeo)
        assert ' over ZEO at ' not in replica.log()

        db = ZEO.DB(('127.0.0.1', primary_zeo))  # creates the root
        replica.wait_for_log(' over ZEO at ')
        reader = ZODB.DB(ZEO.client(('127.0.0.1', replica_zeo),
                                    read_only=True))
        with reader.transaction() as conn:
            assert conn.root() == {}
        reader.close()
        db.close()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]


def test_serve_empty_opens_at_once_and_sigterm_while_waiting(tmp_path):
    repl_port = free_port()  # nobody listens there
    eager, eager_zeo = start(tmp_path, 'eager',
                             'replicate-from 127.0.0.1:%s' % repl_port,
                             zeo_extra='  serve-empty on')
    waiting, waiting_zeo = start(tmp_path, 'waiting',
                                 'replicate-from 127.0.0.1:%s' % repl_port)
    try:
        eager.wait_for_log(' over ZEO at ')
        client = ZEO.client(('127.0.0.1', eager_zeo), read_only=True)
        assert client.lastTransaction() == b'\0' * 8
        client.close()
        waiting.wait_for_log('waiting for the first transaction')
    finally:
        statuses = [waiting.stop(), eager.stop()]
    assert statuses == [0, 0]
    assert 'stopping (SIGTERM)' in waiting.log()
    assert ' over ZEO at ' not in waiting.log()
