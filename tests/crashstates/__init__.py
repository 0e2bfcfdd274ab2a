"""The crash-state checker: what a power loss can leave of a replica.

`recorder` interposes on the file-system calls of a replica applying a
workload with blobs in this process (zrsd's own apply path: `Receiver`,
`ReplicaStorage`, FileStorage, the blob directory) and records every
operation -- write, truncate, fsync, create, mkdir, rename, unlink -- and
every publication (the tid ZEO clients and downstream secondaries may see
from then on).  `model` replays a prefix of that log into the states a
power loss could leave: fsynced data kept; writes since the file's last
fsync dropped, kept, or torn at a sector boundary; names created, renamed
or removed since their directory's last fsync undone (a prefix of them
kept).  `judge` writes each state into a scratch directory, opens it as
zrsd does, and checks the durability rule:

- the file opens, and its history is a prefix of the primary's;
- it holds every transaction published before the crash;
- every blob of that history is present and byte-identical;
- replication resumes from there and converges on the primary's history
  and blobs (checked for a sample of the states).

`test_crash_states` runs a short form in `make test` and the long form
(at least 10,000 states) in `make torture`.
"""
