"""Scenario links: cuts, stalls and throttling of the replication link.

The replica connects through `chaos.ChaosProxy`.  The proxy cuts the link
(FIN or RST, at a random moment of each connection's life), stalls it
(forwards nothing for 0.2-2 s, sometimes cut while stalled) and
throttles it (20 KB/s to 500 KB/s for a while), with write bursts in
between.  Checks: the final files are equal; no checksum or protocol
error is ever logged.
"""
from harness.chaos import ChaosProxy

from .scenario import Scenario


class Links(Scenario):
    """Cuts, stalls and throttling of the replication link."""

    name = 'links'

    def run(self, counts):
        self.start_primary()
        self.wait_commits(100)
        proxy = ChaosProxy(self.primary.repl_port)
        self.proxies.append(proxy)
        replica = self.node('replica', upstream=proxy.port).start()
        self.wait_caught_up(replica)
        events = (['cut'] * counts['cuts'] + ['stall'] * counts['stalls']
                  + ['throttle'] * counts['throttles'])
        self.rng.shuffle(events)
        for event in events:
            if self.rng.random() < 0.2:
                self.burst(self.rng.uniform(0.2, 1.0))
            # A random moment in the life of an open connection.
            self.wait(lambda: proxy.open_links(), 'a replication link')
            self.pause(self.rng.expovariate(1 / 0.3))
            getattr(self, event)(proxy)
        self.say('proxy: %d connections, %d cuts (%d links), %.1f MB '
                 'forwarded' % (proxy.accepted, proxy.cuts, proxy.links_cut,
                                proxy.bytes_down / 1e6))
        self.settle([replica])
        self.writer_summary()
        self.compare(replica)

    def cut(self, proxy):
        reset = self.rng.random() < 0.5
        if proxy.cut(reset=reset):
            self.count('link cuts (%s)' % ('RST' if reset else 'FIN'))

    def stall(self, proxy):
        proxy.stall()
        self.pause(self.rng.uniform(0.2, 2.0))
        if self.rng.random() < 0.3:
            proxy.cut(reset=self.rng.random() < 0.5)
            self.count('link cuts during a stall')
        proxy.flow()
        self.count('stalls')

    def throttle(self, proxy):
        proxy.throttle(self.rng.choice([20e3, 100e3, 500e3]))
        self.burst(self.rng.uniform(0.5, 2.0))
        if self.rng.random() < 0.3:
            proxy.cut(reset=self.rng.random() < 0.5)
            self.count('link cuts while throttled')
        proxy.throttle(None)
        self.count('throttled periods')
