"""Crash points of the file copy (tests/test_copy_file.py).

The test puts this directory on the PYTHONPATH of a zrsd: Python imports
this module at start-up, and the process exits at once (as kill -9 would:
os._exit, nothing flushed or synced) when the copy reaches the stage named
in $ZRSD_COPY_CRASH_AT, the first time, or the Nth time with STAGE:N:

- replica side (zrsd.replica.seeding.FileCopy): `query` (sent, before the
  answer), `proof` (hashing its prefix), `data` (writing file data),
  `blob` (writing a blob file), `sync` (syncing), `end` (the end message
  received, before it is checked), `index` (saving the index);
- primary side (zrsd.primary.seeder.Seeder): `prefix` (checking the
  replica's prefix), `send` (sending file data), `finish` (after the
  last data, before the end message).
"""
import os

_WHERE = os.environ.get('ZRSD_COPY_CRASH_AT')


def _install(stage, count):
    from zrsd import internals, seedprotocol
    from zrsd.primary import seeder
    from zrsd.replica import seeding
    targets = {
        'query': (seeding.FileCopy, '_next_frame'),
        'proof': (seeding.FileCopy, '_hash'),
        'data': (seeding.FileCopy, '_data'),
        'blob': (seeding.FileCopy, '_blob_data'),
        'sync': (seeding.FileCopy, '_sync'),
        'end': (seeding.FileCopy, '_end'),
        'index': (internals, 'save_index'),
        'prefix': (seeder.Seeder, '_check_prefix'),
        'send': (seeder.Seeder, '_send_bytes'),
        'finish': (seedprotocol, 'end'),
    }
    owner, name = targets[stage]
    original = getattr(owner, name)
    calls = [0]

    def crash(*args, **kw):
        calls[0] += 1
        if calls[0] >= count:
            os._exit(9)
        return original(*args, **kw)
    setattr(owner, name, crash)


if _WHERE:
    _stage, _, _count = _WHERE.partition(':')
    _install(_stage, int(_count or 1))
