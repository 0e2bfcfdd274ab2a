"""The `zrsd-rewind` command: the configuration, the report, the exit
status.

`main` parses the command line; `rewind` loads the configuration, picks
the `<zrs>` section, locks and reads the replica's file, finds the last
transaction it shares with the primary (`probe.shared_prefix`), prints
what is (or would be) removed, cuts the file and opens the storage once
to prove it parses.  See the package's docstring for the whole story.
"""
import os
import sys

import zc.lockfile

from zrsd import config as zconfig
from zrsd.daemon import promotion
from zrsd.tools.options import add_timeout, command_parser
from zrsd.tids import format_tid
from .probe import Primary, shared_prefix
from .replica import (Replica, RewindError, cut, error_text, lock_storage,
                      removed_transactions)

REWOUND, NO_COMMON_HISTORY, ERROR = 0, 1, 2

DEFAULT_TIMEOUT = 5.0

USAGE = 'zrsd-rewind -C FILE [--dry-run] [--timeout SECONDS] [NAME]'

# Longest user or description shown for a removed transaction.
SHOWN = 40


def choose_section(config, name):
    """The `<zrs>` section to rewind: `name`, or the only replica."""
    try:
        zrs = zconfig.choose_section(config, name)
    except ValueError as exc:
        raise RewindError(str(exc))
    if zrs.replicate_from is None:
        raise RewindError('<zrs %s> has no replicate-from: a primary has '
                          'nothing to compare against' % zrs.name)
    return zrs


def rewind(args, out):
    """Run the command; the exit status.  Raises RewindError."""
    try:
        config = zconfig.load(args.config)
    except zconfig.ConfigError as exc:
        raise RewindError(str(exc))
    zrs = choose_section(config, args.name)
    settings = zrs.section.base.config
    path, blob_dir = settings.path, getattr(settings, 'blob_dir', None)
    if not os.path.isfile(path):
        raise RewindError('%s: no such file' % path)
    lock = lock_storage(path)
    if os.path.exists(promotion.record_path(path)):
        out('note: %s records a promotion: zrsd starts this storage as a '
            'primary whatever replicate-from says; remove it to make it a '
            'replica' % promotion.record_path(path))
    try:
        replica = Replica(path, blob_dir)
        m = last_shared(zrs, replica, args.timeout, out)
        if m is None:
            return REWOUND
        if m == 0:
            return NO_COMMON_HISTORY
        end = replica.headers[m - 1].end
        removed = removed_transactions(replica, m)
        if args.dry_run:
            report(replica, m, removed, True, out)
            return REWOUND
        cut(path, end, [name for *_, files in removed for name in files])
        report(replica, m, removed, False, out)
    finally:
        lock.close()
    # FileStorage takes the lock itself; opening rebuilds and saves the
    # index of the shorter file, and proves that the file parses.
    try:
        zrs.open_base().close()
    except zc.lockfile.LockError:
        out('zrsd started meanwhile: it rebuilds the index itself')
    except Exception as exc:
        raise RewindError('the rewound file %s does not open: %s' % (
            path, error_text(exc)))
    return REWOUND


def last_shared(zrs, replica, timeout, out):
    """How many leading transactions to keep: None when nothing is to be
    removed, 0 when none is shared (reported on stderr)."""
    if not replica.tids:
        out('the replica %s is empty: nothing to rewind' % replica.path)
        return None
    primary = Primary(zrs, replica.blobs is not None, timeout)
    out('<zrs %s> %s: %d transactions, last %s; comparing with the primary '
        'at %s' % (zrs.name, replica.path, len(replica.tids),
                   format_tid(replica.tids[-1]), primary.where))
    m, why = shared_prefix(primary, replica)
    if m == len(replica.tids):
        out('nothing to rewind: the replica %s (%d transactions, last %s) '
            'is a prefix of the history of the primary at %s' % (
                replica.path, m, format_tid(replica.tids[-1]), primary.where))
        return None
    if m == 0:
        print('zrsd-rewind: the replica %s and the primary at %s have no '
              'transaction in common (the replica\'s first transaction %s: '
              '%s); another database? Nothing changed. To replicate from '
              'this primary, remove the file (and its blob directory) and '
              'let zrsd seed it again' % (
                  replica.path, primary.where, format_tid(replica.tids[0]),
                  why), file=sys.stderr)
        return 0
    out('the replica\'s transaction %s is not the primary\'s: %s' % (
        format_tid(replica.tids[m]), why))
    return m


def _short(value):
    text = value.decode('utf-8', 'replace')
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + '...')


def report(replica, m, removed, dry_run, out):
    """One line per removed transaction, then the totals."""
    for tid, user, description, _ in removed:
        out('%s %s  user %s  description %s' % (
            'would remove' if dry_run else 'removed', format_tid(tid),
            _short(user), _short(description)))
    out('%s %d transactions, %d bytes, %d blob files; %s %s' % (
        'would remove' if dry_run else 'removed', len(removed),
        replica.size - replica.headers[m - 1].end,
        sum(len(files) for *_, files in removed),
        'would rewind to' if dry_run else 'rewound to',
        format_tid(replica.tids[m - 1])))


def parse_args(argv):
    parser = command_parser(
        'zrsd-rewind', usage=USAGE,
        description='Truncate a forked replica (the daemon stopped) after '
                    'the last transaction it\nshares with its primary '
                    '(replicate-from), so that it can replicate from it '
                    'again.',
        epilog='Exit status: 0 rewound or nothing to rewind, 1 no '
               'transaction in common, 2 error.\n\n'
               'Example: zrsd-rewind -C /etc/zrsd/zrs.conf --dry-run')
    parser.add_argument('-C', '--configuration', dest='config',
                        required=True, metavar='FILE',
                        help='the zrsd configuration file')
    parser.add_argument('--dry-run', action='store_true',
                        help='print what would be removed; change nothing')
    add_timeout(parser, DEFAULT_TIMEOUT, 'silence from the primary that '
                'means it has nothing more')
    parser.add_argument('name', nargs='?', metavar='NAME',
                        help='the <zrs NAME> section (default: the only one '
                             'with replicate-from)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return rewind(args, print)
    except RewindError as exc:
        print('zrsd-rewind: %s' % exc, file=sys.stderr)
        return ERROR
    except OSError as exc:  # a local file: permissions, disk, ...
        print('zrsd-rewind: %s' % error_text(exc), file=sys.stderr)
        return ERROR


if __name__ == '__main__':
    sys.exit(main())
