"""Mutual TLS on replication links, the allow-from list, and ZEO's own
<ssl> on the client port.  Certificates are generated at run time."""
import os
import socket
import ssl

import pytest
import ZEO

from certs import Authority
from support import BIN, Process, assert_same_history, free_port, wait_until

CONFIG = '''\
<zeo>
  address 127.0.0.1:%(zeo_port)s
  serve-empty on
%(zeo_ssl)s
</zeo>
<zrs 1>
%(role)s
  reconnect-delay 0.2
  max-reconnect-delay 1
  handshake-timeout 5
%(extra)s
%(ssl)s
  <filestorage>
    path %(path)s
  </filestorage>
</zrs>
<eventlog>
  <logfile>
    path STDOUT
    format %%(levelname)s %%(name)s %%(message)s
  </logfile>
</eventlog>
'''


def ssl_section(cert, key, ca, extra=''):
    return ('  <ssl>\n    certificate %s\n    key %s\n    authenticate %s\n'
            '%s  </ssl>' % (cert, key, ca, extra))


class Node:
    def __init__(self, tmp_path, name, role, ssl='', extra='', zeo_ssl=''):
        self.zeo_port = free_port()
        self.path = str(tmp_path / ('%s.fs' % name))
        config = tmp_path / ('%s.conf' % name)
        config.write_text(CONFIG % dict(
            zeo_port=self.zeo_port, role=role, ssl=ssl, extra=extra,
            zeo_ssl=zeo_ssl, path=self.path))
        self.proc = Process([os.path.join(BIN, 'zrsd'), '-C', str(config)],
                            str(tmp_path / ('%s.log' % name)))
        self.proc.wait_for_log(' over ZEO at ', 60)

    def stop(self):
        return self.proc.stop()


@pytest.fixture
def pki(tmp_path):
    good = Authority(tmp_path, 'good')
    other = Authority(tmp_path, 'other')
    return dict(
        good=good, other=other,
        primary=good.issue('primary'), replica=good.issue('replica'),
        stranger=other.issue('stranger'), impostor=other.issue('impostor'))


def start_primary(tmp_path, pki, extra=''):
    port = free_port()
    cert, key = pki['primary']
    primary = Node(tmp_path, 'primary', '  replicate-to 127.0.0.1:%s' % port,
                   ssl=ssl_section(cert, key, pki['good'].path), extra=extra)
    primary.proc.wait_for_log('(TLS, client certificates required)')
    db = ZEO.DB(('127.0.0.1', primary.zeo_port))
    with db.transaction() as conn:
        conn.root()['x'] = 1
    return primary, port, db


def replica_role(port):
    return '  replicate-from 127.0.0.1:%s' % port


def test_mutual_tls_replicates(tmp_path, pki):
    primary, port, db = start_primary(tmp_path, pki)
    cert, key = pki['replica']
    replica = Node(tmp_path, 'replica', replica_role(port),
                   ssl=ssl_section(cert, key, pki['good'].path))
    try:
        client = ZEO.client(('127.0.0.1', replica.zeo_port), read_only=True)
        wait_until(lambda: client.lastTransaction() == db.lastTransaction(),
                   message='replicated over TLS')
        with db.transaction() as conn:
            conn.root()['y'] = 2
        wait_until(lambda: client.lastTransaction() == db.lastTransaction(),
                   message='a live commit over TLS')
        client.close()
        db.close()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]
    assert assert_same_history(primary.path, replica.path) == 3


def test_secondary_from_another_ca_is_refused(tmp_path, pki):
    primary, port, db = start_primary(tmp_path, pki)
    cert, key = pki['stranger']
    # The stranger trusts the primary's CA but its own certificate is
    # signed by another one.
    replica = Node(tmp_path, 'stranger', replica_role(port),
                   ssl=ssl_section(cert, key, pki['good'].path))
    try:
        primary.proc.wait_for_log('TLS handshake failed, secondary refused')
        replica.proc.wait_for_log('TLS handshake with the primary failed')
        assert 'streaming transactions' not in primary.proc.log()
        db.close()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]


def test_primary_from_another_ca_is_refused(tmp_path, pki):
    primary, port, db = start_primary(tmp_path, pki)
    cert, key = pki['replica']
    # This replica trusts only the other CA: the primary is unknown to it.
    replica = Node(tmp_path, 'replica', replica_role(port),
                   ssl=ssl_section(cert, key, pki['other'].path))
    try:
        replica.proc.wait_for_log('TLS handshake with the primary failed')
        assert 'streaming transactions' not in primary.proc.log()
        db.close()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]


def test_plain_and_certificateless_clients_are_refused(tmp_path, pki):
    primary, port, db = start_primary(tmp_path, pki)
    try:
        # A plain-text secondary: its handshake bytes are not TLS.
        with socket.create_connection(('127.0.0.1', port)) as plain:
            plain.sendall(b'\0\0\0\x06zrs2.0\0\0\0\x08' + b'\0' * 8)
            plain.settimeout(30)
            try:
                # The primary answers with TLS alerts at most, then closes.
                while plain.recv(100):
                    pass
            except ConnectionResetError:
                pass
        primary.proc.wait_for_log('TLS handshake failed, secondary refused')

        # A TLS client without a certificate.
        context = ssl.create_default_context(cafile=pki['good'].path)
        with socket.create_connection(('127.0.0.1', port)) as raw:
            with pytest.raises((ssl.SSLError, ConnectionResetError,
                                BrokenPipeError)):
                with context.wrap_socket(
                        raw, server_hostname='127.0.0.1') as tls:
                    tls.sendall(b'\0\0\0\x06zrs2.0')
                    tls.settimeout(30)
                    if tls.recv(100) == b'':
                        raise ConnectionResetError('closed')
        wait_until(lambda: primary.proc.log().count(
            'TLS handshake failed, secondary refused') >= 2,
            message='the second refusal logged')
        assert 'streaming transactions' not in primary.proc.log()
        db.close()
    finally:
        assert primary.stop() == 0


def test_allow_from(tmp_path, pki):
    port = free_port()
    primary = Node(tmp_path, 'primary', '  replicate-to 127.0.0.1:%s' % port,
                   extra='  allow-from 10.0.0.0/8\n  allow-from 192.0.2.7')
    replica = Node(tmp_path, 'replica', replica_role(port))
    try:
        primary.proc.wait_for_log('127.0.0.1 is not in allow-from')
        assert 'streaming transactions' not in primary.proc.log()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]


def test_zeo_port_tls(tmp_path, pki):
    cert, key = pki['primary']
    port = free_port()
    zeo_ssl = ssl_section(cert, key, pki['good'].path)
    primary = Node(tmp_path, 'primary', '  replicate-to 127.0.0.1:%s' % port,
                   zeo_ssl=zeo_ssl)
    try:
        client_cert, client_key = pki['replica']
        context = ssl.create_default_context(cafile=pki['good'].path)
        context.load_cert_chain(client_cert, client_key)
        db = ZEO.DB(('127.0.0.1', primary.zeo_port), ssl=context,
                    ssl_server_hostname='localhost')
        with db.transaction() as conn:
            conn.root()['over'] = 'tls'
        db.close()

        stranger_cert, stranger_key = pki['stranger']
        context = ssl.create_default_context(cafile=pki['good'].path)
        context.load_cert_chain(stranger_cert, stranger_key)
        with pytest.raises(Exception):
            ZEO.client(('127.0.0.1', primary.zeo_port), ssl=context,
                       ssl_server_hostname='localhost', wait_timeout=3)
    finally:
        assert primary.stop() == 0
