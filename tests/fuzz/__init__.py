"""Fuzz zrsd's replication protocol, both directions, against real processes.

    .venv/bin/python scripts/fuzz.py --cases 1000 --seed 1 --in-process
    .venv/bin/python scripts/fuzz.py --cases 50 --side primary -v

Prints a summary; exits 1 if an invariant was violated.  Deterministic
given ``--seed``: the source histories are built with a fake clock, and
case *k* of a lane is drawn from ``random.Random((seed, lane, k))``.

Secondary side (`secondary_side`): lanes ``plain`` (zrs2.0) and ``blobs``
(zrs2.1), each a long-lived ``zrsd`` replica of a small real FileStorage,
the *source*, fed one case per connection.  Case *k* replays 0-2 valid
transactions after the tid the replica names, then breaks 1-3 in one way
(`cases`).  The oracle is exact: a correct replica commits the
transactions whose C frame the case left intact, so the next handshake
must name source index ``start + commits``.  After each case: the process
is alive; ZEO serves that tid and the new records, which equal the
source's; no marker file (hostile pickles try to create one) nor
temporary blob file exists; the connection's log ends in exactly one
short ERROR naming the expected reason, or one ``disconnected``.  Near the
end of the source the replica stops (status 0), its file is compared with
the source, blobs included, and a fresh one starts.

Primary side (`primary_side`): a zrsd primary with a real replica
attached, attacked in batches by hostile secondaries, each connection
judged from its log lines against a model of the handshake rules; after
each batch a commit must reach the replica, still on its first
connection; at the end both stop with status 0 and their files match.

In-process layer (`in_process`): the same cases fed to zrsd's `Receiver`
in random chunks over a real FileStorage, about a thousand a second, with
the same oracle.  First, every armed hostile pickle is loaded with plain
`pickle.loads` to prove it creates its marker.

Copy lanes (`copy_cases`, `copy_side`): a new replica copies its
primary's file (zrsd-seed1) from a fake primary that answers with the
valid copy of a source file broken in one way (bad or truncated frames,
wrong kinds, absurd I, corrupt transaction records, blob frames out of
place, a wrong E, a close anywhere, huge frames), or intact.  The oracle
says how many bytes a correct replica keeps: exactly a prefix of the file
at a transaction boundary, never the broken transaction.  In process
(``copy_file`` over a unix socket, about a hundred cases a second) and
with real ``zrsd`` replicas (about one case a second), which then go on
to ZRS, serve the whole source and stop cleanly.

    .venv/bin/python scripts/fuzz.py --side none --copy-cases 50

``test_fuzz`` runs short versions, and the long ones (``pytest -m long``).
"""
