"""zrsd benchmark: catch-up, lag, reads, commits and memory, side by side
with zc.zrs and runzeo (`make bench`; docs/BENCHMARK.md): one module per
phase, with `run_phase`, `summarise` and `report`, on tests/harness's
nodes."""
from .cli import main

__all__ = ['main']
