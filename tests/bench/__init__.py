"""zrsd benchmark: catch-up, lag, reads and memory, side by side with zc.zrs.

    .venv/bin/python scripts/bench.py [--preset small|default] [--rounds N]
                                      [--lag-seconds S] [--json PATH]

`make bench` runs the default preset; README.md, "Benchmark", explains
what each figure measures and how to read the output.

Everything runs on 127.0.0.1 with real processes started through the test
harness (tests/harness): zc.zrs 3.1.0 primaries under ZEO 6's `runzeo`
(`zczrs`), zc.zrs 3.1.0 secondaries on ZODB 5.5.1 (the peer virtualenv of
`peers`, built on first use), `zrsd` primaries and replicas
(`zrsd_nodes`), a plain `runzeo`, ZEO clients in this process and in
worker processes.  zc.zrs is never imported here.

One module per phase -- `catchup`, `lag`, `reads`, `memory` -- each with
its measurement, its part of the summary and its table; around them
`workload` (the cached FileStorage), `nodes` (the servers of a run),
`workers` (ZEO clients in spawned processes), `stream` (a primary's stream
read off a socket), `measure` (CPU, memory, ZEO status, logs), `figures`
(statistics, targets, formats), `report` and `cli`.
"""

from .cli import main

__all__ = ['main']
