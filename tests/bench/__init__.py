"""zrsd benchmark: catch-up, lag, reads and memory, side by side with zc.zrs
(`make bench`; `scripts/bench.py --help`; README.md, "Benchmark"), with
real processes on 127.0.0.1 started through tests/harness (zc.zrs is never
imported here).

One module per phase (`catchup`, `lag`, `reads`, `memory`: `run_phase`,
`summarise`, `report`); around them `workload`, `nodes` (the servers and
worker processes of a run), `stream`, `measure` and `cli`.
"""
from .cli import main

__all__ = ['main']
