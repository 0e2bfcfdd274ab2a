"""The zrsd torture suite: replication under kills, broken links, packs
and a full disk, checked transaction by transaction.

Real `zrsd` processes on 127.0.0.1 (`nodes`), a writer committing through
ZEO (`workload`) and one module per scenario (`--only NAME`): kill-replica,
links, primary-restart, pack, disk-full; `run` holds the counts (short /
`--long`), the report and the command line (`scripts/torture.py`).  The
random choices come from `--seed`, the moments from real time.  Each
scenario ends with `scenario.Scenario.settle`, then `judges` compare each
replica with the primary and scan every log.
"""
