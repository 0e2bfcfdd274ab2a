"""The one test harness: every test, the fuzzer, the torture suite, the
drill and the benchmark build their nodes, configs, streams and histories
from here.

- `process`: ports, `wait_until`, `Process`, and `Node`, the base of
  every kind of node.
- `zrsd_nodes`: `ZrsdNode`, `RunzeoNode`, `PlainZeoNode`, the zrsd
  config, `Writer`, `MemorySampler`, blob helpers.
- `zczrs`: a zc.zrs 3.1 primary, `populate`, `commit_change`.
- `peers`: a zc.zrs 3.1 secondary on ZODB 5.5.1 in its own virtualenv.
- `chaos`: `ChaosProxy`, the one TCP proxy: it cuts, stalls, throttles
  and holds links.
- `stream`: `Stream` (what a primary sends) and `FakePrimary`.
- `history`: FileStorage histories (`transactions`) and the pack oracle.
- `certs`: a throw-away certificate authority for the TLS tests.
"""
