"""`allow-from` on a primary: which peers may connect (no network).

On a `[::]` listener, IPv4 peers arrive as IPv4-mapped IPv6 addresses
(`::ffff:a.b.c.d`); they must match IPv4 networks.  (A network written
with host bits set is a configuration error: tests/test_config.py.)
"""
import ipaddress

import pytest

from zrsd.primary.server import PrimaryServer


def server(*networks):
    return PrimaryServer('1', storage=None, address=('::', 0), reactor=None,
                         allowed_networks=[ipaddress.ip_network(n)
                                           for n in networks])


@pytest.mark.parametrize('host, allowed', [
    ('10.1.2.3', True),
    ('::ffff:10.1.2.3', True),          # IPv4 peer on a [::] listener
    ('::ffff:192.0.2.1', False),
    ('192.0.2.1', False),
    ('2001:db8::1', True),
    ('2001:db9::1', False),
    ('not an address', False),
    (None, False),                      # a unix socket peer
])
def test_peers_against_networks(host, allowed):
    assert server('10.0.0.0/8', '2001:db8::/32').allows(host) is allowed


def test_no_networks_allows_everyone():
    assert server().allows('192.0.2.1') and server().allows(None)
