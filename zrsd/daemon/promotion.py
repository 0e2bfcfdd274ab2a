"""Promotion records: a replica turned primary, durably, beside its storage.

`zrsdctl -C FILE promote [NAME]` writes a record next to the storage's
Data.fs (`Data.fs.promoted`, JSON) and signals the zrsd process holding the
storage (SIGUSR1; its pid is in FileStorage's lock file).  The daemon
promotes every replica whose record asks for it and marks the record done.
At start-up a `<zrs>` section with a record is a primary, whatever its
`replicate-from` says, so a restart with the unchanged configuration stays
primary.  Removing the record (daemon stopped) undoes the promotion.

Records are written to a temporary file, fsynced, renamed over the old one,
and the directory is fsynced: a crash leaves the old record or the new one.
"""
import json
import os
import time

PROMOTE_SIGNAL_NAME = 'SIGUSR1'

REQUESTED = 'requested'
DONE = 'done'


def record_path(fs_path):
    """Where the promotion record of the FileStorage at `fs_path` lives."""
    return fs_path + '.promoted'


def read_record(fs_path):
    """The promotion record (a dict) of a storage, or None."""
    try:
        with open(record_path(fs_path)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PromotionError('%s: unreadable promotion record: %s' % (
            record_path(fs_path), exc))


def write_record(fs_path, record):
    """Write `record` durably (see the module docstring)."""
    path = record_path(fs_path)
    temporary = path + '.new'
    with open(temporary, 'w') as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def request(fs_path, previous_primary):
    """Record that the storage at `fs_path` is to become a primary."""
    record = {
        'state': REQUESTED,
        'requested_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'previous_primary': previous_primary,
    }
    write_record(fs_path, record)
    return record


def mark_done(fs_path, record, tid):
    """Record that the promotion happened, at `tid` (hex)."""
    record = dict(record, state=DONE, last_replicated_tid=tid,
                  promoted_at=time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                            time.gmtime()))
    write_record(fs_path, record)
    return record


def catches_signal(pid, signum):
    """Does process `pid` handle `signum`?  (Linux's /proc; True when it
    cannot be told.)  A process that does not would be killed by it."""
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('SigCgt:'):
                    return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


class PromotionError(Exception):
    """A promotion record cannot be read or acted upon."""
