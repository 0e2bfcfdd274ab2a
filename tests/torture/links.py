"""Scenario links: the replica's link, through `chaos.ChaosProxy`, is cut
(FIN or RST), stalled (0.2-2 s, sometimes cut meanwhile) and throttled
(20-500 KB/s), with write bursts between.  Checks: the final files are
equal; no checksum or protocol error is ever logged.
"""
from .scenario import Scenario


class Links(Scenario):
    name = 'links'

    def run(self, counts):
        self.start_primary(100)
        proxy = self.proxy()
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
        self.compare(replica)

    def cut(self, proxy):
        reset = self.rng.random() < 0.5
        if proxy.cut(reset=reset):
            self.count('link cuts (%s)' % ('RST' if reset else 'FIN'))

    def maybe_cut(self, proxy, when):
        if self.rng.random() < 0.3:
            proxy.cut(reset=self.rng.random() < 0.5)
            self.count('link cuts ' + when)

    def stall(self, proxy):
        proxy.stall()
        self.pause(self.rng.uniform(0.2, 2.0))
        self.maybe_cut(proxy, 'during a stall')
        proxy.flow()
        self.count('stalls')

    def throttle(self, proxy):
        proxy.throttle(self.rng.choice([20e3, 100e3, 500e3]))
        self.burst(self.rng.uniform(0.5, 2.0))
        self.maybe_cut(proxy, 'while throttled')
        proxy.throttle(None)
        self.count('throttled periods')
