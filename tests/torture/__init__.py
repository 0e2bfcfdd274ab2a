"""The zrsd torture suite: replication under kills, broken links, packs
and a full disk, checked transaction by transaction.

Everything runs on 127.0.0.1 with real components: `zrsd` processes
started from config files (a primary with a blob directory, replicas;
the harness's `harness.zrsd_nodes.ZrsdNode`, see `nodes`), a writer thread
committing continuously through a ZEO client of the primary (`workload`),
and the chaos of each scenario.  The random choices (which moment to
kill, how long to stall, ...) come from `--seed`; the moments themselves
are real time, so two runs with one seed differ in where the kills land.

Scenarios, one module each (`--only NAME`; counts short / `--long`):

- kill-replica (3 / 50 cycles): `kill -9` of a replica at start-up,
  during catch-up and live (`kill_replica`);
- links (10 / 200 cuts, 1 / 20 stalls, 1 / 10 throttles): the
  replication link cut, stalled and throttled by `chaos.ChaosProxy`
  (`links`);
- primary-restart (1 / 10 restarts): `kill -9` and restart of the primary
  under a cascade (`primary_restart`);
- pack (1 / 3 packs): packs of the primary while a replica catches up
  (`pack`);
- disk-full (1 / 3 episodes): replicas whose disk fills up, on a tmpfs or
  with an injected quota (`disk_full`).

Every scenario ends the same way (`scenario.Scenario.settle`): the writer
stops, the replicas reach the primary's last transaction, every process
gets SIGTERM and must exit 0; then `judges` compare each replica with the
primary and scan every log.  `run` holds the counts, the report and the
command line (`scripts/torture.py`); `test_torture` runs the short form
in `make test` and the long one in `make torture` (marker `long`).
"""
