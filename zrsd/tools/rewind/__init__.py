"""`zrsd-rewind`: truncate a forked replica to the history it shares with
its primary.

Usage: zrsd-rewind -C FILE [--dry-run] [--timeout SECONDS] [NAME]

After an unplanned failover the old primary may hold a few transactions
that the promoted replica never received.  Before it can follow the new
primary, its FileStorage must end at the last transaction both hold; a zrsd
replica's file is then byte-identical to its primary's again once it has
caught up.

The command works on the stopped daemon's files: it takes the FileStorage
lock (`Data.fs.lock`) and holds it until the file is cut.  NAME is the
`<zrs NAME>` section (default: the only one with `replicate-from`); its
`replicate-from` is the primary to compare against.

How the last shared transaction is found.  The primary is read through
the ZRS protocol only, exactly as a replica would (`zrs2.1` when the local
storage has a blob directory, TLS when the section has `<ssl>`).  A probe
of position k asks the primary for the transactions after the replica's
transaction k-1 (after z64 for k = 0) and reads the first one:

    shared(k): the primary's first transaction after the replica's
    transaction k-1 is the replica's transaction k: same tid, status, user,
    description, extension and records, in order, as (oid, tid, data,
    data_txn), and the same blob file contents.

The answer is "no" when the primary closes the connection without sending
anything (a zrsd primary refuses a start tid that is not in its history)
or stays silent for `--timeout` seconds (it has nothing after that tid).
A forked history is a shared prefix followed by different transactions, so
shared() is true up to some position and false after it: a binary search
over the replica's transactions finds the boundary in O(log n)
connections, after first trying the last transaction (the common case:
nothing to rewind).  Each probe's transaction is compared record by
record as it arrives, and judged only once its commit message passed the
stream checksum: a damaged stream never decides what is cut.

Packs.  A pack rewrites the transactions before the pack time (status
'p', records dropped, data inlined) and drops the ones left empty.  A
primary packs its own file, and so may a replica (packs are never
replicated).  So, when either side's transaction has status 'p': the same
tid counts as shared when user, description and extension agree; a primary
transaction with status 'p' and a greater tid means the replica's
transaction was packed away on the primary, and a primary transaction with
a smaller tid than a replica transaction with status 'p' means the
primary's transaction was packed away on the replica: both count as
shared.  The limit: a fork older than either side's pack time cannot be
detected by content.

The cut.  The file is truncated right after the last shared transaction
(and fsynced, with its directory), the index `Data.fs.index` is removed
(it describes the longer file), the blob files of the blob records of the
removed transactions are removed, and the FileStorage is opened once
read-write and closed, which proves that the file parses and saves a new
index.  The lock is released just before that open (FileStorage takes it
itself).

Exit status: 0 rewound, or nothing to rewind; 1 no transaction in common
(another database: nothing changed); 2 usage or configuration error, the
storage in use, the primary unreachable or misbehaving, or a local
failure.

The modules: `replica` is the local side (the replica's file, its
committed transactions and blob files, the cut); `probe` asks the primary
over ZRS (the blocking client, TLS, the probe sink, the binary search);
`command` is the command (`main`: the configuration, the report, the exit
status).
"""
