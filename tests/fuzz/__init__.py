"""Fuzz zrsd's replication protocol, both directions, against real processes.

    .venv/bin/python scripts/fuzz.py --cases 1000 --seed 1 --in-process
    .venv/bin/python scripts/fuzz.py --side none --copy-cases 50

Exits 1 if an invariant was violated.  Deterministic given ``--seed``: the
sources are built with a fake clock; case *k* of a lane is drawn from
``random.Random((seed, lane, k))``.  Every lane (`judges.Lane`) judges each
case against an exact oracle of what a correct peer does:

- secondary side (`secondary_side`, cases by `cases`): zrsd replicas fed
  one broken stream per connection, and the same cases fed to `Receiver`
  in process, about a thousand a second;
- primary side (`primary_side`): a zrsd primary with a real replica,
  attacked in batches by hostile secondaries;
- copy lanes (`copy_cases`, `copy_side`): a new replica copies (zrsd-seed1)
  from a fake primary a file broken in one way, and must keep exactly a
  prefix at a transaction boundary; in process and with real replicas.

``test_fuzz`` runs short versions, and the long ones (``pytest -m long``).
"""
