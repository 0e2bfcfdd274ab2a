"""Mutual TLS on replication links, the allow-from list, and ZEO's own
<ssl> on the client port.  Certificates are generated at run time."""
import socket
import ssl

import pytest
import ZEO

from harness.certs import Authority
from harness.history import assert_same_history
from harness.process import wait_until
from harness.zrsd_nodes import ZrsdNode, ssl_lines


def node(tmp_path, name, upstream=None, ssl='', extra='', zeo_ssl=''):
    """A started zrsd serving ZEO at once (`ssl`, `extra` go into its
    `<zrs>` section, `zeo_ssl` into `<zeo>`)."""
    return ZrsdNode(tmp_path, name, upstream=upstream,
                    zeo_lines='  serve-empty on\n' + zeo_ssl,
                    zrs_lines='  handshake-timeout 5\n' + extra + ssl).start()


@pytest.fixture
def pki(tmp_path):
    good = Authority(tmp_path, 'good')
    other = Authority(tmp_path, 'other')
    return dict(
        good=good, other=other,
        primary=good.issue('primary'), replica=good.issue('replica'),
        stranger=other.issue('stranger'), impostor=other.issue('impostor'))


def start_primary(tmp_path, pki, extra=''):
    cert, key = pki['primary']
    primary = node(tmp_path, 'primary',
                   ssl=ssl_lines(cert, key, pki['good'].path), extra=extra)
    primary.wait_for_log('(TLS, client certificates required)')
    db = primary.db()
    with db.transaction() as conn:
        conn.root()['x'] = 1
    return primary, primary.repl_port, db


def test_mutual_tls_replicates(tmp_path, pki):
    primary, port, db = start_primary(tmp_path, pki)
    cert, key = pki['replica']
    replica = node(tmp_path, 'replica', port,
                   ssl=ssl_lines(cert, key, pki['good'].path))
    try:
        client = replica.client()
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
    assert assert_same_history(primary.fs_path, replica.fs_path) == 3


# name: (the replica's certificate, the CA it trusts, what the primary
# logs or None).  A stranger trusts the primary's CA, but its own
# certificate is signed by another; a replica that trusts only the other
# CA does not know the primary.
ANOTHER_CA = {
    'secondary-from-another-ca': (
        'stranger', 'good', 'TLS handshake failed, secondary refused'),
    'primary-from-another-ca': ('replica', 'other', None),
}


@pytest.mark.parametrize('case', sorted(ANOTHER_CA))
def test_peer_from_another_ca_is_refused(tmp_path, pki, case):
    name, trusted, primary_says = ANOTHER_CA[case]
    primary, port, db = start_primary(tmp_path, pki)
    cert, key = pki[name]
    replica = node(tmp_path, name, port,
                   ssl=ssl_lines(cert, key, pki[trusted].path))
    try:
        if primary_says:
            primary.wait_for_log(primary_says)
        replica.wait_for_log('TLS handshake with the primary failed')
        assert 'streaming transactions' not in primary.log()
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
        primary.wait_for_log('TLS handshake failed, secondary refused')

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
        wait_until(lambda: primary.log().count(
            'TLS handshake failed, secondary refused') >= 2,
            message='the second refusal logged')
        assert 'streaming transactions' not in primary.log()
        db.close()
    finally:
        assert primary.stop() == 0


def test_allow_from(tmp_path, pki):
    primary = node(tmp_path, 'primary',
                   extra='  allow-from 10.0.0.0/8\n  allow-from 192.0.2.7\n')
    replica = node(tmp_path, 'replica', primary.repl_port)
    try:
        primary.wait_for_log('127.0.0.1 is not in allow-from')
        assert 'streaming transactions' not in primary.log()
    finally:
        statuses = [replica.stop(), primary.stop()]
    assert statuses == [0, 0]


def test_zeo_port_tls(tmp_path, pki):
    cert, key = pki['primary']
    primary = node(tmp_path, 'primary',
                   zeo_ssl=ssl_lines(cert, key, pki['good'].path))
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
