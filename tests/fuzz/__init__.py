"""Fuzz zrsd's replication protocol, both directions, against real processes.

    .venv/bin/python scripts/fuzz.py --cases 1000 --seed 1 --in-process
    .venv/bin/python scripts/fuzz.py --cases 50 --side primary -v

Prints a summary; exits 1 if an invariant was violated.  Deterministic
given ``--seed``: the source histories are built with a fake clock, and
case *k* of a lane is drawn from ``random.Random((seed, lane, k))``.

Secondary side.  Two lanes, ``plain`` (a replica without blob-dir, zrs2.0)
and ``blobs`` (zrs2.1), each a long-lived ``zrsd`` replica fed by a case
server that serves one case per connection, replicating a small real
FileStorage, the *source* (creations, changes, big records, undos, odd
metadata, blobs of 0-3 blocks).  A replica names its last tid in each
handshake; case *k* replays 0-2 valid transactions after it, then a
*window* of 1-3 broken in one way: byte mutations, frame mutations with
the original checksums, or synthetic bad parts with correct checksums
(hostile pickles, malformed fields, bad tids, digests, length prefixes and
block counts; see `cases`).  The oracle is exact: a correct replica
commits the transactions whose C frame the case left intact (`committed`),
so the next handshake must name source index ``start + commits``.  After
each case: the process is alive; ZEO answers with that tid and serves the
new records; the file's new transactions equal the source's; no marker
file (hostile pickles try to create one) nor temporary blob file exists;
the connection's log ends in exactly one ERROR naming the expected reason
(short, not raised from ``zrsd/protocol.py``) or one ``disconnected``.
Near the end of the source an epoch ends: SIGTERM (status 0), the file
compared with the source, blobs included, and a fresh replica.

Primary side.  A zrsd primary with a real replica attached, attacked in
batches by hostile secondaries: random bytes and frames, random tids
(streams verified transaction by transaction against the primary's file),
junk after the handshake, keep-alives then a partial frame, half-closes,
resets mid-stream, storms of connections and slow-loris connections that
the handshake timeout must drop.  Each connection's outcome comes from a
model of the handshake rules (`primary_side.expect_from_primary`) and is
judged from the log lines of its client port.  After each batch a commit
must reach the replica, still on its first connection; at the end both
stop with status 0 and their files are compared.

In-process layer.  The same cases fed to `zrsd.replica.receiver.Receiver`
through `zrsd.protocol.FrameDecoder`, in random chunks, over a real
FileStorage (on /dev/shm if there is one), about a thousand a second: the
same oracle and invariants, plus nothing of a transaction left open and
the objects of the safe unpickler unchanged.  First, every armed hostile
pickle is loaded with plain `pickle.loads` to prove it creates its marker.

Modules: ``pickles``, ``source``, ``cases`` (the generator and oracle),
``nodes`` (processes, logs), ``judges`` (violations, `Summary`),
``secondary_side``, ``primary_side``, ``in_process`` and ``run`` (the
command line); ``test_fuzz`` runs short versions, and the long one
(``pytest -m long``).
"""
