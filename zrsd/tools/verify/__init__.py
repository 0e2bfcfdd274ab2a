"""`zrsd-verify`: check online that a replica holds its primary's history.

Usage: zrsd-verify [options] PRIMARY REPLICA

Both histories are read transaction by transaction, in lockstep, from the
first transaction (or `--start TID`) up to the replica's last transaction,
and the first difference is reported:

- a transaction on one side only (missing on the replica, or on the
  replica only);
- different metadata: status, user, description, extension;
- different records: the records of a transaction are compared one by one,
  in order, on (oid, tid, data, data_txn); the report names the record and
  its oid (for data, the sizes and sha256 digests of both sides).

The replica may legitimately be behind: the primary's transactions after
the replica's last one are counted, not compared, and reported with the
time between the two last transactions.

Packed histories.  FileStorage's pack rewrites the transactions up to the
pack time: status 'p', records no longer current or reachable dropped,
data inline instead of back pointers, transactions left empty dropped;
later transactions are copied unchanged.  A side may hold such
transactions because it was packed, or because it received them from a
packed upstream (after its own unpacked ones).  So the comparison is
local, transaction by transaction, instead of cut at a horizon:

- a transaction where either side has status 'p' must have the same user,
  description and extension on both; for each oid recorded on both sides
  its last record must agree on (tid, data); a packed side may lack
  records the other has, and when only one side is packed, that side may
  not have records the other lacks (a pack only drops records);
- a transaction on one side only is accepted when the side lacking it is
  packed there: its transaction just before or just after has status 'p'
  (the same rule as the primary's history guard); it is counted;
- everywhere else the records are compared strictly, except that a record
  may hold its data inline on one side where the other points back to a
  transaction that lies in the first side's packed part;
- as soon as either side shows a packed part, `--objects` is turned on
  (and the output says so), since history alone no longer proves the
  current state: an object may then be absent on a packed side only (a
  pack's garbage collection), which is counted, not a divergence.

Comparing a packed transaction holds the sha256 digests of its records
(one per oid per side) in memory, not their data.

Each side is a ZEO server or a FileStorage file:

- `fs:PATH` is a FileStorage file, `zeo:ADDRESS` a ZEO server;
- without a prefix, an argument ending in `.fs` is a file, anything else a
  ZEO address: `host:port`, `[ipv6]:port`, `port` (on 127.0.0.1) or a unix
  socket path.

Files are opened read-only (FileStorage takes no lock then), so a file may
be checked while a server has it open; it is read as it was when opened.
ZEO servers are asked through a read-only ZEO client and ZEO's server-side
transaction iterator.  Neither server has to stop.

`--objects` also loads every object that exists on either side, as of the
replica's last transaction, from both sides and compares data and serial:
this reads each storage through its index (its load path) rather than by
scanning history.  Objects are enumerated with `record_iternext` on both
sides, merged in oid order; memory stays bounded.

Exit status: 0 the histories agree, 1 they diverge, 2 usage error or a
server or file that cannot be reached or read.

Memory stays bounded: each history is streamed by a reader thread at most
`READ_AHEAD` transactions or records ahead of the comparison, which holds
one record of each side at a time and accumulates nothing but counters.
(The threads read both sides at once: over ZEO each transaction and each
record is a round trip.)

The modules: `sides` opens a side and streams its history (the reader
threads); `history` compares two histories (metadata, records, the pack
rules); `objects` compares the current objects (`--objects`); `command`
is the command (`main`: arguments, the report, the exit status).
"""
