"""zrsd between real hosts: each node in its own network namespace with
its own address on 10.231.N.0/24 and host name (`NAME.zrs.test`), linked
by a bridge; mutual TLS with certificates naming the hosts, `allow-from`
the subnet, ZEO clients and `zrsd-verify` in the root namespace.

    primary ──> replica1, replica2, cascade ──> downstream
    outsider (10.232.N.6, another subnet on the same wire): refused

Needs root and `ip netns`: skipped otherwise.
"""
import filecmp
import types
from contextlib import closing

import pytest

from harness import hosts
from harness.certs import Authority
from harness.process import port_open, run, wait_until
from harness.zrsd_nodes import Writer


@pytest.fixture(scope='module')
def network():
    try:
        with closing(hosts.Network()) as network:
            subnet = network.subnet
            other = '10.232.%d.0/24' % subnet.network_address.packed[2]
            network.add('primary', routes=[other])
            for name in ('replica1', 'replica2', 'cascade', 'downstream'):
                network.add(name)
            network.add('outsider', other.replace('.0/', '.6/'),
                        routes=[subnet])
            network.check(network.hosts[1], network.hosts[0])
            yield network
    except hosts.Unavailable as exc:
        pytest.skip('real hosts: %s (needs root and ip netns)' % exc)


@pytest.fixture(scope='module')
def cluster(network, tmp_path_factory, module_processes):
    """The running nodes, by name and as `secondaries`; `ca`, `hosts`."""
    directory = tmp_path_factory.mktemp('real-hosts')
    ca = Authority(directory, 'zrs-test-ca')
    by_name = {host.name: host for host in network.hosts}

    def node(name, upstream=None, **options):
        return hosts.HostNode(directory, by_name[name], ca, upstream,
                              register=module_processes, **options)
    primary = node('primary', allow_from=[network.subnet])
    cascade = node('cascade', primary, serve=True,
                   allow_from=[network.subnet])
    # replica1 (whose link is cut) notices a dead link within about twice
    # its keep-alive-delay.
    secondaries = [node('replica1', primary,
                        zrs_lines='  keep-alive-delay 2\n'),
                   node('replica2', primary), cascade,
                   node('downstream', cascade)]
    for each in [primary] + secondaries:
        each.launch()
    for each in [primary] + secondaries:
        for line in each.ready():
            each.wait_for_log(line)
    return types.SimpleNamespace(
        ca=ca, directory=directory, hosts=by_name, primary=primary,
        secondaries=secondaries, **{n.name: n for n in secondaries})


def reaches(node, tid):
    """Wait until a ZEO client of `node` sees `tid` or a later one."""
    with closing(node.client()) as storage:
        wait_until(lambda: storage.lastTransaction() >= tid, 60,
                   message='%s at %s' % (node.name, tid.hex()))


def converged(cluster, writer):
    """Every secondary has the last commit, verifies, equals the primary."""
    assert writer.error is None, writer.error
    for node in cluster.secondaries:
        node.wait_for_tid(writer.tids[-1])
        run('zrsd-verify', cluster.primary.zeo_arg, node.zeo_arg)
        assert filecmp.cmp(cluster.primary.fs_path, node.fs_path, False)


def streaming(upstream):
    """{address: certificate name} of `upstream`'s streaming secondaries."""
    return {ip: entry['tls_peer']
            for ip, entry in upstream.secondaries().items()
            if entry['state'] == 'streaming'}


def test_mutual_tls_between_hosts(cluster):
    primary, cascade = cluster.primary, cluster.cascade
    primary.wait_for_log('(TLS, client certificates required)')
    with Writer(primary, 'first') as writer:
        wait_until(lambda: writer.commits >= 20 or writer.error)
    converged(cluster, writer)
    # Each secondary by its address on the wire and its certificate's name.
    for upstream, names in ((primary, ('replica1', 'replica2', 'cascade')),
                            (cascade, ('downstream',))):
        expected = {cluster.hosts[name].ip: cluster.hosts[name].hostname
                    for name in names}
        wait_until(lambda: streaming(upstream) == expected,
                   message='%s streaming to %s' % (upstream.name, expected))
    assert cluster.replica1.status()['primary'].startswith(
        'primary.zrs.test:')


def test_host_outside_allow_from_is_refused(cluster, processes):
    primary = cluster.primary
    outsider = hosts.HostNode(cluster.directory, cluster.hosts['outsider'],
                              cluster.ca, primary, register=processes)
    outsider.start()
    # It reaches the primary (and has a good certificate), but is dropped
    # at once, again and again; it shows as refused and holds nothing.
    primary.wait_for_log('%s is not in allow-from' % outsider.host.ip)
    wait_until(lambda: outsider.status(inside=True)['state'] == 'refused',
               message='the outsider refused')
    assert outsider.status(inside=True)['last_transaction'] == '0' * 16
    assert outsider.host.ip not in primary.secondaries()
    outsider.stop()


@pytest.mark.parametrize('tcp_gives_up', [False, True],
                         ids=['replica-notices', 'tcp-gives-up'])
def test_link_cut_mid_stream(cluster, network, tcp_gives_up):
    """A cut replica notices (keep-alive), and so does the primary when TCP
    gives up (here at once with `ss -K`); the replica resumes."""
    primary, cut = cluster.primary, cluster.replica1
    ip = cut.host.ip
    wait_until(lambda: ip in streaming(primary), message='replica1 streams')
    connected_since = primary.secondaries()[ip]['connected_since']
    with Writer(primary, 'cut', size=10000) as writer:
        wait_until(lambda: writer.commits >= 10 or writer.error)
        network.cut(cut.host)
        try:
            assert not port_open(cut.zeo_port, ip)
            # The primary sees it fall behind once the socket buffers are
            # full; the other replica and the cascade's downstream keep
            # streaming; it has nothing committed since the cut.
            wait_until(lambda: writer.error or primary.secondaries()[ip][
                'transactions_behind'] > 0, message='replica1 behind')
            during = writer.tids[-1]
            for node in (cluster.replica2, cluster.downstream):
                reaches(node, during)
            stuck = cut.status(inside=True)['last_transaction']
            assert bytes.fromhex(stuck) < during
            wait_until(lambda: cut.status(inside=True)['state'] ==
                       'disconnected', message='replica1 noticing the cut')
            if tcp_gives_up:
                if not network.drop(primary.repl_port, primary.host,
                                    cut.host):
                    pytest.skip('ss -K cannot kill sockets here')
                wait_until(lambda: ip not in primary.secondaries() and cut.
                           status(inside=True)['state'] == 'disconnected',
                           message='both ends see the link down')
        finally:
            network.restore(cut.host)
        count = writer.commits
        wait_until(lambda: writer.commits >= count + 20 or writer.error)
    converged(cluster, writer)
    wait_until(lambda: streaming(primary).get(ip) == cut.host.hostname,
               message='replica1 streaming again')
    assert primary.secondaries()[ip]['connected_since'] > connected_since
