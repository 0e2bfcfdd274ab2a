"""Fuzz zrsd's replication protocol, both directions, against real processes.

From the command line (`run.main`):

    .venv/bin/python scripts/fuzz.py --cases 1000 --seed 1 --in-process
    .venv/bin/python scripts/fuzz.py --cases 50 --side primary -v
    .venv/bin/python scripts/fuzz.py --cases 0 --side none --in-process \\
        --in-process-cases 50000

Prints a summary and exits 1 if any invariant was violated (0 when clean).
Everything is deterministic given ``--seed``: the source histories are
built with a fake clock, so their tids and bytes are the same on every run,
and every case is drawn from a `random.Random` seeded with
``(seed, lane, case number)``.

Secondary side (zrsd replicas fed by a fake primary)
----------------------------------------------------
Two *lanes* run side by side, each one long-lived ``zrsd`` replica process
(``reconnect-delay 0.1``, ``serve-empty``, no keep-alives) and a *case
server*: a fake primary that serves exactly one case per connection.  The
``plain`` lane's replica has no blob-dir (it speaks zrs2.0); the ``blobs``
lane's has one (zrs2.1).  Each lane replicates a small real FileStorage,
the *source*, built once: cycles of creations, changes, a big record, undos
(records with a back pointer, and undone creations, i.e. ``None`` data),
transaction metadata with ``datetime`` extensions, and in the blob lane blob
files of 0 to 140000 bytes (0 to 3 blocks).

Keeping cases independent: a replica's whole state is its last tid, and it
names it in every handshake.  Case *k* of a lane is generated from
``(seed, lane, k)`` and the source index *i* of that start tid: it replays
0-2 valid transactions after the start tid (the *prefix*: so cases start
from every point of the history, and resuming after a rejection is
exercised every time), then a *window* of the 1-3 following source
transactions that is broken in one way:

- byte mutations of the window's wire bytes: bit flips, inserted, deleted
  or overwritten bytes, spliced copies, rewritten length prefixes,
  truncation at a random byte (then close);
- frame mutations with the original checksums (what a wire could do to a
  good stream): duplicated, dropped (C, T, anything), swapped and moved
  frames; legacy (checksum-less) streams get only the structural ones;
- synthetic bad parts with *correct* checksums, so only the check under
  test can stop them: hostile pickles (``os.system``, ``posix.system``,
  ``subprocess.Popen``, ``builtins.eval``/``exec``/``open``,
  ``getattr(__import__('os'), 'system')``, ``copyreg._reconstructor``,
  OBJ/INST/STACK_GLOBAL/PERSID/EXT opcodes, ``__reduce__`` objects pickled
  by the real pickler, BUILD on an allowed global, ``bytes(2**40)``...) as
  a whole message or inside a T extension, an S field or a C digest;
  arbitrary global names; malformed fields; a T whose tid is not above the
  last; a record tid that is not the transaction's; a wrong digest; empty
  messages; oversized and big-but-allowed length prefixes; a B message to
  the replica without blob-dir; ``nblocks = 10**12`` followed by a few blocks
  then close; negative block counts; overlong fields and global names.

Every case ends with the case server closing its side (``shutdown``), then
waiting for zrsd to drop the connection; the replica reconnects, and the
next handshake is both the sync point and the first observation.

The oracle is exact.  The case server also builds the *valid* wire of prefix
plus window (correct checksums).  If ``d`` is the length of the common
prefix of the valid wire and the case's wire, a correct replica commits
exactly the transactions whose C frame ends within ``d``: everything after
``d`` either breaks the structure or the md5 (which covers every payload
before each C).  So after case *k* the replica must hand-shake with the
source tid at index ``i + commits``: less is a lost valid transaction,
more (or a tid that is not in the source) an unchecked one.

When a replica gets near the end of its source, the lane ends an *epoch*:
SIGTERM (exit status 0 expected), the replica's file is compared with the
source, blob files included, and a fresh replica (new files, new ports)
starts.

Checked after every case: the process is alive; a fresh read-only ZEO
client (``ZEO.client(addr, read_only=True)``) answers, its
``lastTransaction()`` is the handshake's tid and ``loadSerial`` serves
every record committed since the last check; those transactions, read
from the replica's file, equal the source's (tid, status, user,
description, extension, and every record's oid, tid, data and data_txn).
(Not read with ZEO's ``iterator()``: a ZEO 6 client refuses the
``datetime`` in the source's extensions and then waits for ever.  The
file is quiet meanwhile: the replica waits for our first frame.)  No
marker file exists (every hostile pickle tries to create one); no
temporary blob file is left behind; and the
replica's log for that connection ends in exactly one line: one ERROR
(``replication stream rejected: ...`` or ``applying transaction ...
failed: ...``) or one INFO ``disconnected``.  (zrsd rate-limits repeats of
an identical apply failure to DEBUG; the replicas log at DEBUG, and such a
line counts if the same text was an ERROR before.)  Truncations must not log an
ERROR; must-reject cases must log one naming the expected reason; an ERROR
line must be short (``MAX_ERROR_LINE``) and its traceback, if any, must not
come from ``zrsd/protocol.py`` (the decoder must turn bad input into
``ProtocolError``).  Other ERROR/CRITICAL lines, and WARNINGs other than
the expected ones, are violations too.

Primary side (a zrsd primary with a real zrsd replica attached)
--------------------------------------------------------------
Hostile secondaries in batches: random bytes, random frames, a valid
protocol name and a random tid (refused if above the primary's last tid,
streamed otherwise: the whole stream up to the last commit is read, and
each transaction must be the next one of the primary's file, records and
metadata equal, with a correct checksum), valid handshakes
followed by random non-empty or oversized frames, keep-alives then a
partial frame, half-closes, resets in the middle of a stream, storms of
5-40 concurrent connections opened and dropped (FIN or RST, with nothing,
a partial or a full handshake), and slow-loris connections (nothing, or
part of a handshake; one per batch dribbles a 64-byte frame a byte per
case) that the handshake timeout must drop; they are judged a few batches
later, so that nobody waits for the timeout.  The
expected outcome of each connection comes from a model of the primary's
handshake rules (`expect_from_primary`): refused with a given reason (the
primary must close the connection and log exactly one ERROR naming it) or
not (zero ERROR lines, or one for the handshake timeout if we closed
mid-handshake: our close may arrive after it; the connection ends with
``disconnected``).  Log
lines are matched to connections by the client port, which the primary
logs.  After each batch the primary must be alive, a new commit must
reach the legit replica, and the replica must still be on its first
connection.  At the end both stop with status 0 and their files are
compared.

In-process layer
----------------
The same case generator, fed straight into `zrsd.replica.receiver.Receiver`
through `zrsd.protocol.FrameDecoder` (in random chunks) over
``ReplicaStorage(FileStorage(...)).writer`` for a plain and a blob source:
about a thousand cases per second (its files go to /dev/shm when there is
one: every commit is fsynced).  Same oracle and invariants (exceptions
other than `ProtocolError` may only come from the storage, not from
the protocol module; error texts are bounded; nothing of a transaction
stays open; markers), plus: the objects the safe unpickler hands out
(``_codecs.encode``'s wrapper, ``bytes``, the datetime types) are
snapshotted and must not change, and each epoch's file is reopened and
compared with the source.  Before anything runs, every "armed" hostile
pickle is loaded once with the plain `pickle.loads` to prove that it does
create its marker.

Modules
-------
``pickles`` (hand-made pickles: opcodes, the hostile ones), ``source`` (the
source histories), ``streams`` (the stream a primary sends, and how much of
a broken one a correct replica commits), ``cases`` and ``synthetic`` (the
case generator), ``nodes`` (the zrsd processes), ``logs`` (reading their
logs), ``judges`` (what counts as a violation), ``results`` (the summary),
``secondary_side``, ``primary_side`` and ``primary_cases``, ``in_process``,
and ``run`` (`run.run` and the command line).  ``test_fuzz`` runs short
versions, and the long one (``pytest -m long``).
"""
