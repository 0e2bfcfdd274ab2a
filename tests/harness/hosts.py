"""Real hosts on one machine: Linux network namespaces, each with its own
address and host name, joined by a bridge in the root namespace (which
gets the subnet's `.254`, so the tests reach every host); `HostNode`, a
zrsd running on a host (its certificate naming it).

Needs root and `ip netns`; `Network()` raises `Unavailable` otherwise.
Names carry our pid (`zh<pid>-...`), so leftovers of a crashed run never
clash with a new one, and the next run removes them.
"""
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys

from .process import http_get
from .zrsd_nodes import ZrsdNode, ssl_lines

DOMAIN = 'zrs.test'
ETC_NETNS = '/etc/netns'    # `ip netns exec NS` mounts NS/hosts on /etc/hosts


class Unavailable(Exception):
    """Network namespaces cannot be made here."""


def ip(*args, check=True):
    """Run `ip ARGS`; its output, or (if `check`) RuntimeError."""
    args = tuple(map(str, args))
    done = subprocess.run(('ip',) + args, capture_output=True, text=True)
    if done.returncode and check:
        raise RuntimeError('ip %s: %s' % (' '.join(args),
                                          done.stderr.strip()))
    return done.stdout


def remove_leftovers():
    """Remove the namespaces, bridges and hosts files of dead runs."""
    names = ip('netns', 'list').split() + [
        line.split(':')[1].strip().split('@')[0]
        for line in ip('-o', 'link', 'show', 'type', 'bridge').splitlines()]
    if os.path.isdir(ETC_NETNS):
        names += os.listdir(ETC_NETNS)
    for name in names:
        match = re.fullmatch(r'zh(\d+)-\S+', name)
        if (match and not os.path.exists('/proc/' + match.group(1))
                and not ip('netns', 'pids', name, check=False).strip()):
            ip('netns', 'del', name, check=False)
            ip('link', 'del', name, check=False)
            shutil.rmtree(os.path.join(ETC_NETNS, name), ignore_errors=True)


def free_subnet():
    """The first 10.231.N.0/24 that no route here covers (another run's)."""
    for n in range(256):
        subnet = ipaddress.ip_network('10.231.%d.0/24' % n)
        routes = ip('route', 'show', 'match', subnet[1]).splitlines()
        if all(route.startswith('default ') for route in routes):
            return subnet
    raise RuntimeError('no free subnet in 10.231.0.0/16')


class Host:
    """A namespace `ns` (`eth0` at `ip`, peer of the bridge port `veth`)."""

    def __init__(self, network, name, address):
        self.name, self.hostname = name, '%s.%s' % (name, DOMAIN)
        self.ns = '%s-%s' % (network.prefix, name)
        self.veth = '%s-%d' % (network.prefix, len(network.hosts))
        self.interface = ipaddress.ip_interface(address)
        self.ip = str(self.interface.ip)

    def exec(self, *args):
        """`args` as a command run inside this host."""
        return ['ip', 'netns', 'exec', self.ns] + list(args)


class Network:
    """A bridge on `subnet` (the first 10.231.N.0/24 free) and its hosts;
    `close()` removes everything (its processes must be gone first)."""

    def __init__(self):
        if os.geteuid() != 0 or shutil.which('ip') is None:
            raise Unavailable('not root' if os.geteuid() else 'no ip command')
        self.prefix = 'zh%d' % os.getpid()
        self.bridge, self.hosts = self.prefix + '-br', []
        try:
            remove_leftovers()
            self.subnet = free_subnet()
            ip('link', 'add', self.bridge, 'type', 'bridge')
            ip('addr', 'add', self.address(254), 'dev', self.bridge)
            ip('link', 'set', self.bridge, 'up')
        except RuntimeError as exc:
            self.close()
            raise Unavailable(str(exc)) from None

    def address(self, n):
        return '%s/%d' % (self.subnet[n], self.subnet.prefixlen)

    def add(self, name, address=None, routes=()):
        """A new host (default: the next address), with on-link `routes`."""
        host = Host(self, name, address or self.address(len(self.hosts) + 1))
        self.hosts.append(host)
        try:
            ip('netns', 'add', host.ns)
            ip('link', 'add', host.veth, 'type', 'veth',
               'peer', 'name', 'eth0', 'netns', host.ns)
            ip('link', 'set', host.veth, 'master', self.bridge, 'up')
            ip('-n', host.ns, 'addr', 'add', host.interface, 'dev', 'eth0')
            for device in ('lo', 'eth0'):
                ip('-n', host.ns, 'link', 'set', device, 'up')
            for network in routes:
                ip('-n', host.ns, 'route', 'add', network, 'dev', 'eth0')
        except RuntimeError as exc:
            raise Unavailable(str(exc)) from None
        lines = ''.join('%s %s %s\n' % (h.ip, h.hostname, h.name)
                        for h in self.hosts)
        for each in self.hosts:      # every host knows every other by name
            os.makedirs(os.path.join(ETC_NETNS, each.ns), exist_ok=True)
            with open(os.path.join(ETC_NETNS, each.ns, 'hosts'), 'w') as f:
                f.write('127.0.0.1 localhost\n' + lines)
        return host

    def check(self, client, server):
        """Unavailable unless `client` reaches `server` (a firewall?)."""
        listener = subprocess.Popen(server.exec(
            sys.executable, '-c', 'import socket, sys; s = socket.'
            'create_server((sys.argv[1], 0)); print(s.getsockname()[1], '
            'flush=True); s.accept()', server.ip), stdout=subprocess.PIPE)
        try:
            port = listener.stdout.readline().strip()
            if subprocess.run(client.exec(
                    sys.executable, '-c', 'import socket, sys; socket.'
                    'create_connection(sys.argv[1:], timeout=5)',
                    server.ip, port), capture_output=True).returncode:
                raise Unavailable('%s cannot reach %s over the bridge '
                                  '(a firewall?)' % (client.ns, server.ns))
        finally:
            listener.kill()
            listener.wait()
            listener.stdout.close()

    def cut(self, host):
        """Pull `host`'s cable: its bridge port goes down."""
        ip('link', 'set', host.veth, 'down')

    def restore(self, host):
        ip('link', 'set', host.veth, 'up')

    def drop(self, port, *hosts):
        """Kill `port`'s TCP connections on `hosts` (`ss -K`); False: no."""
        if shutil.which('ss') is None:
            return False
        for host in hosts:
            done = subprocess.run(host.exec(
                'ss', '-K', '( sport = :%d or dport = :%d )' % (port, port)),
                capture_output=True, text=True)
            if done.returncode or 'not supported' in done.stderr:
                return False
        return True

    def close(self):
        for host in self.hosts:     # `netns del` takes both veth ends
            ip('netns', 'del', host.ns, check=False)
            shutil.rmtree(os.path.join(ETC_NETNS, host.ns), ignore_errors=True)
        ip('link', 'del', self.bridge, check=False)
        if os.path.isdir(ETC_NETNS) and not os.listdir(ETC_NETNS):
            os.rmdir(ETC_NETNS)


class HostNode(ZrsdNode):
    """zrsd on `host`, listening on its address, reaching `upstream` by
    host name; mutual TLS signed by `authority`, `allow_from` networks."""

    def __init__(self, directory, host, authority, upstream=None,
                 allow_from=(), **options):
        self.host = host
        options.setdefault('zeo_lines', '  serve-empty on\n')
        options.setdefault('copy_file', 'new')
        if upstream is not None:
            upstream = '%s:%d' % (upstream.host.hostname, upstream.repl_port)
        super().__init__(directory, host.name, upstream, monitor=True,
                         **options)
        self.zrs_lines += ''.join('  allow-from %s\n' % network
                                  for network in allow_from) + ssl_lines(
            *authority.issue(host.name, host.hostname, host.ip),
            authority.path)

    @property
    def zeo_address(self):
        return (self.host.ip, self.zeo_port)

    def command(self):
        return self.host.exec(*super().command())

    def config(self):
        return super().config().replace('127.0.0.1:', self.host.ip + ':')

    def status(self, inside=False):
        """The node's first /status storage (`inside`: read from its host)."""
        url = 'http://%s:%d/status' % (self.host.ip, self.monitor_port)
        if inside:
            text = subprocess.run(self.host.exec(
                sys.executable, '-c', 'import sys, urllib.request; '
                'sys.stdout.buffer.write(urllib.request.urlopen('
                'sys.argv[1], timeout=5).read())', url),
                capture_output=True, check=True).stdout
        else:
            _, _, text = http_get(self.monitor_port, '/status', self.host.ip)
        return json.loads(text)['storages'][0]

    def secondaries(self):
        """{IP address: status entry} of the connected secondaries."""
        return {entry['address'].rsplit(':', 1)[0]: entry
                for entry in self.status().get('secondaries', ())}
