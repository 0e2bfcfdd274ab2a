"""The zrsd torture suite: replication under kills, broken links, packs
and a full disk, checked transaction by transaction.

Real zrsd processes (`nodes`), a writer (`workload`), one module per
scenario, `run` (counts, report, command line); each scenario ends with
`Scenario.settle`, then `judges`.  The random choices come from `--seed`,
the moments from real time.
"""
