"""The one test harness: every test, the fuzzer, the torture suite, the
drill and the benchmark build their nodes, configs, streams and histories
from here.

- `process`: free ports, polling with a deadline (`wait_until`), a child
  `Process`, and `Node`, the base class of every kind of node (config
  file, start/stop/kill, log, ZEO client, last tid).
- `zrsd_nodes`: `ZrsdNode` (a zrsd primary, replica or cascade, by its
  links), `RunzeoNode` (zrsd's `<zrs>` in runzeo), `PlainZeoNode` (plain
  ZEO), the zrsd config builder, `Writer` (a committing thread) and
  `MemorySampler`.
- `zczrs`: a real zc.zrs 3.1 primary (`ZcZrsPrimary`), the populated
  history, and `Proxy`, a gated TCP proxy.
- `peers`: a real zc.zrs 3.1 secondary on ZODB 5.5.1 in its own
  virtualenv (`ZcZrsSecondary`).
- `chaos`: `ChaosProxy`, which cuts, stalls and throttles a link.
- `stream`: `Stream`, the one builder of what a primary sends, and
  `FakePrimary`, which serves scripted streams.
- `history`: the one reader of FileStorage histories (`transactions`) and
  the one pack oracle (`same_after_pack`).
- `certs`: a throw-away certificate authority for the TLS tests.
"""
