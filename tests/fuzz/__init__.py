"""Fuzz zrsd's replication protocol, both directions, against real processes.

    .venv/bin/python scripts/fuzz.py --cases 1000 --seed 1 --in-process
    .venv/bin/python scripts/fuzz.py --side none --copy-cases 50

Exits 1 if an invariant was violated.  Deterministic given ``--seed``: the
sources are built with a fake clock; case *k* of a lane is drawn from
``random.Random((seed, lane, k))``.  Every lane (`judges.Lane`) judges each
case against an exact oracle of what a correct peer does:

- secondary side (`secondary_side`, cases by `cases`): long-lived zrsd
  replicas (zrs2.0, zrs2.1) of a small real FileStorage, fed one broken
  stream per connection; the next handshake must name the transactions
  whose C frame stayed intact; ZEO, the file, markers of hostile pickles,
  blob temporaries and the connection's one ERROR line are checked;
- primary side (`primary_side`): a zrsd primary with a real replica,
  attacked in batches by hostile secondaries judged from its log; after
  each batch a commit must reach the replica on its first connection;
- in process (`secondary_side` too): the same cases fed to `Receiver`,
  about a thousand a second;
- copy lanes (`copy_cases`, `copy_side`): a new replica copies (zrsd-seed1)
  from a fake primary a file broken in one way, and must keep exactly a
  prefix at a transaction boundary; in process and with real replicas.

``test_fuzz`` runs short versions, and the long ones (``pytest -m long``).
"""
