"""The crash-state checker: what a power loss can leave of a replica.

`recorder` records the file-system operations (and publications) of a
replica applying a workload with blobs in this process, through zrsd's
own apply path; `model` replays a prefix of that log into the states a
power loss could leave; `judge` opens each state as zrsd does and checks
the durability rule:

- the file opens, and its history is a prefix of the primary's;
- it holds every transaction published before the crash;
- every blob of that history is present and byte-identical;
- replication resumes from there and converges on the primary's history
  and blobs (checked for a sample of the states).

`test_crash_states` runs a short form in `make test` and the long form
(at least 10,000 states) in `make torture`.
"""
