"""`allow-from` on a primary: which peers may connect (no network).

On a `[::]` listener IPv4 peers arrive as IPv4-mapped IPv6 addresses
(`::ffff:a.b.c.d`); they must match IPv4 networks.
"""
import ipaddress

import pytest

from zrsd.primary.server import PrimaryServer, ServerSettings

NETWORKS = ('10.0.0.0/8', '2001:db8::/32')


@pytest.mark.parametrize('networks, host, allowed', [
    (NETWORKS, '10.1.2.3', True),
    (NETWORKS, '::ffff:10.1.2.3', True),     # IPv4 peer on a [::] listener
    (NETWORKS, '::ffff:192.0.2.1', False),
    (NETWORKS, '192.0.2.1', False),
    (NETWORKS, '2001:db8::1', True),
    (NETWORKS, '2001:db9::1', False),
    (NETWORKS, 'not an address', False),
    (NETWORKS, None, False),                 # a unix socket peer
    ((), '192.0.2.1', True),                 # no networks: everyone
    ((), None, True),
])
def test_peers_against_networks(networks, host, allowed):
    server = PrimaryServer('1', storage=None, address=('::', 0), reactor=None,
                           settings=ServerSettings(allowed_networks=tuple(
                               ipaddress.ip_network(n) for n in networks)))
    assert server.allows(host) is allowed
