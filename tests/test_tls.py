"""Mutual TLS on replication links, the allow-from list, and ZEO's own
<ssl> on the client port.  Certificates are generated at run time."""
import socket
import ssl

import pytest
import ZEO

from harness.certs import Authority
from harness.history import assert_same_history
from harness.process import stop_all, wait_until
from harness.stream import read_until_closed
from harness.zrsd_nodes import ssl_lines

REFUSED = 'TLS handshake failed, secondary refused'


def start_node(node, name, upstream=None, ssl='', extra='', zeo_ssl=''):
    """A started zrsd serving ZEO at once; `ssl`, `extra`: <zrs> lines."""
    return node(name, upstream=upstream,
                zeo_lines='  serve-empty on\n' + zeo_ssl,
                zrs_lines='  handshake-timeout 5\n' + extra + ssl).start()


@pytest.fixture
def pki(tmp_path):
    good, other = Authority(tmp_path, 'good'), Authority(tmp_path, 'other')
    return dict(
        good=good, other=other,
        primary=good.issue('primary'), replica=good.issue('replica'),
        stranger=other.issue('stranger'))


def tls(pki, name, ca='good'):
    """The <ssl> lines of `name`'s certificate, trusting the CA `ca`."""
    return ssl_lines(*pki[name], pki[ca].path)


def start_primary(node, pki):
    """A TLS primary holding a commit; (it, its ZRS port, a DB of it)."""
    primary = start_node(node, 'primary', ssl=tls(pki, 'primary'))
    primary.wait_for_log('(TLS, client certificates required)')
    db = primary.db()
    with db.transaction() as conn:
        conn.root()['x'] = 1
    return primary, primary.repl_port, db


@pytest.fixture
def tls_primary(node, pki):
    primary, port, db = start_primary(node, pki)
    yield primary, port, db
    db.close()


def test_mutual_tls_replicates(node, pki, tls_primary):
    primary, port, db = tls_primary
    replica = start_node(node, 'replica', port, ssl=tls(pki, 'replica'))
    replica.wait_for_tid(db.lastTransaction())
    with db.transaction() as conn:
        conn.root()['y'] = 2
    replica.wait_for_tid(db.lastTransaction())   # a live commit
    stop_all(replica, primary)
    assert assert_same_history(primary.fs_path, replica.fs_path) == 3


# name: (the replica's certificate, the CA it trusts, what the primary
# logs or None): a stranger's certificate or the CA trusted is another.
ANOTHER_CA = {
    'secondary-from-another-ca': ('stranger', 'good', REFUSED),
    'primary-from-another-ca': ('replica', 'other', None),
}


@pytest.mark.parametrize('case', sorted(ANOTHER_CA))
def test_peer_from_another_ca_is_refused(node, pki, tls_primary, case):
    name, trusted, primary_says = ANOTHER_CA[case]
    primary, port, _ = tls_primary
    replica = start_node(node, name, port, ssl=tls(pki, name, trusted))
    if primary_says:
        primary.wait_for_log(primary_says)
    replica.wait_for_log('TLS handshake with the primary failed')
    assert 'streaming transactions' not in primary.log()
    stop_all(replica, primary)


def test_plain_and_certificateless_clients_are_refused(pki, tls_primary):
    primary, port, _ = tls_primary
    # A plain-text secondary: its handshake bytes are not TLS.
    with socket.create_connection(('127.0.0.1', port)) as plain:
        plain.sendall(b'\0\0\0\x06zrs2.0\0\0\0\x08' + b'\0' * 8)
        plain.settimeout(30)
        read_until_closed(plain)   # TLS alerts at most, then it closes
    primary.wait_for_log(REFUSED)
    # A TLS client without a certificate.
    context = ssl.create_default_context(cafile=pki['good'].path)
    with socket.create_connection(('127.0.0.1', port)) as raw, \
            pytest.raises((ssl.SSLError, ConnectionResetError,
                           BrokenPipeError)):
        with context.wrap_socket(raw, server_hostname='127.0.0.1') as secure:
            secure.sendall(b'\0\0\0\x06zrs2.0')
            secure.settimeout(30)
            if secure.recv(100) == b'':
                raise ConnectionResetError('closed')
    wait_until(lambda: primary.log().count(REFUSED) >= 2,
               message='the second refusal logged')
    assert 'streaming transactions' not in primary.log()
    primary.stop()


def test_allow_from(node):
    primary = start_node(node, 'primary', extra='  allow-from 10.0.0.0/8\n'
                         '  allow-from 192.0.2.7\n')
    replica = start_node(node, 'replica', primary.repl_port)
    primary.wait_for_log('127.0.0.1 is not in allow-from')
    assert 'streaming transactions' not in primary.log()
    stop_all(replica, primary)


def test_zeo_port_tls(node, pki):
    primary = start_node(node, 'primary', zeo_ssl=tls(pki, 'primary'))

    def context(name):
        context = ssl.create_default_context(cafile=pki['good'].path)
        context.load_cert_chain(*pki[name])
        return context
    db = ZEO.DB(primary.zeo_address, ssl=context('replica'),
                ssl_server_hostname='localhost')
    with db.transaction() as conn:
        conn.root()['over'] = 'tls'
    db.close()
    with pytest.raises(Exception):
        ZEO.client(primary.zeo_address, ssl=context('stranger'),
                   ssl_server_hostname='localhost', wait_timeout=3)
    primary.stop()
