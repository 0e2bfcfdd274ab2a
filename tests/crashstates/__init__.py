"""The crash-state checker: what a power loss can leave of a replica.

`recorder` records the file-system operations (and publications) of a
replica applying a workload with blobs through zrsd's apply path; `model`
replays a prefix of that log into the states a power loss could leave;
`judge` opens each as zrsd does: the file opens, its history is a prefix
of the primary's holding every transaction published before the crash,
with every blob intact, and (for a sample) replication resumes and
converges.  `test_crash_states`: a short run in `make test`, at least
10,000 states in `make torture`.
"""
