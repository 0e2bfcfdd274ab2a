"""zrsd benchmark: catch-up, lag, reads and memory, side by side with zc.zrs
(`make bench`; `scripts/bench.py --help`; README.md, "Benchmark").

Real processes on 127.0.0.1, started through tests/harness: zc.zrs 3.1.0
primaries under ZEO 6's runzeo, zc.zrs secondaries on ZODB 5.5.1 (the peer
virtualenv), zrsd primaries and replicas, a plain runzeo, ZEO clients here
and in worker processes; zc.zrs is never imported here.

One module per phase -- `catchup`, `lag`, `reads`, `memory` -- each with
its `run_phase`, `summarise` and `report`; around them `workload`, `nodes`
(the servers of a run), `workers`, `stream` (a primary's stream off a
socket), `measure`, `figures`, `report` and `cli`.
"""
from .cli import main

__all__ = ['main']
