"""zrsd benchmark: catch-up, lag, reads and memory, side by side with zc.zrs
(`make bench`; README.md, "Benchmark"): one module per phase, with
`run_phase`, `summarise` and `report`, on tests/harness's nodes."""
from .cli import main

__all__ = ['main']
