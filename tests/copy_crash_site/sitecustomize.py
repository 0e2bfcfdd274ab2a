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
import itertools
import os

_WHERE = os.environ.get('ZRSD_COPY_CRASH_AT')


def _install(stage, count):
    from zrsd import internals, seedprotocol
    from zrsd.primary import seeder
    from zrsd.replica import seeding
    copy, primary = seeding.FileCopy, seeder.Seeder
    owner, name = dict(
        query=(copy, '_next_frame'), proof=(copy, '_hash'),
        data=(copy, '_data'), blob=(copy, '_blob_data'), sync=(copy, '_sync'),
        end=(copy, '_end'), index=(internals, 'save_index'),
        prefix=(primary, '_check_prefix'), send=(primary, '_send_bytes'),
        finish=(seedprotocol, 'end'))[stage]
    original, calls = getattr(owner, name), itertools.count(1)

    def crash(*args, **kw):
        if next(calls) >= count:
            os._exit(9)
        return original(*args, **kw)
    setattr(owner, name, crash)


if _WHERE:
    _stage, _, _count = _WHERE.partition(':')
    _install(_stage, int(_count or 1))
