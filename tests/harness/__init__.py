"""The one test harness: every test, the fuzzer, the torture suite, the
drill and the benchmark build their nodes, configs, streams and histories
from here: `process` (ports, polling, commands, logs, the configs, `Node`),
`zrsd_nodes` (zrsd nodes, `Writer`, blob helpers), `zczrs` (a zc.zrs 3.1
primary, `populate`, `opened`), `peers` (a zc.zrs secondary in its own
virtualenv), `chaos` (`ChaosProxy`, the TCP proxy), `stream` (what a
primary sends, `FakePrimary`, socket readers), `history` (FileStorage
histories, the pack oracle) and `certs` (a throw-away certificate
authority).
"""
