"""The `zrsd-verify` command: arguments, the report, the exit status.

`main` parses the command line, opens both sides (the replica first, so
that its snapshot is not newer than the primary's), compares their
histories and, with `--objects` or a packed history, their objects, and
prints what it found; see the package's docstring for what is compared.
"""
import argparse
import logging
import sys
import traceback

from ZODB.utils import z64

from zrsd.tools.options import add_timeout, command_parser
from zrsd.tids import format_tid, tid_time
from .blobs import BlobComparison
from .history import compare_histories, format_oid
from .objects import compare_objects
from .sides import DEFAULT_TIMEOUT, VerifyError, open_source

AGREE, DIVERGE, ERROR = 0, 1, 2

USAGE = 'zrsd-verify [options] PRIMARY REPLICA'


def _tid_argument(text):
    digits = text[2:] if text.lower().startswith('0x') else text
    try:
        tid = bytes.fromhex(digits)
    except ValueError:
        tid = b''
    if len(tid) != 8:
        raise argparse.ArgumentTypeError(
            'not a tid (16 hex digits): %r' % text)
    return tid


def parse_args(argv):
    parser = command_parser(
        'zrsd-verify', usage=USAGE,
        description='Compare a ZODB replica with its primary, transaction '
                    'by transaction, up to the\nreplica\'s last '
                    'transaction, while both run.',
        epilog='PRIMARY and REPLICA: fs:PATH is a FileStorage file (opened '
               'read-only), zeo:ADDRESS\na ZEO server; without a prefix a '
               'name ending in .fs is a file, anything else a\nZEO address '
               '(host:port, [ipv6]:port, port on 127.0.0.1, or a unix '
               'socket path).\n\n'
               'Exit status: 0 they agree, 1 they diverge, 2 usage error or '
               'unreachable server.\n\n'
               'Example: zrsd-verify --objects primary.example:8100 '
               '127.0.0.1:8100')
    parser.add_argument('primary', metavar='PRIMARY',
                        help='the primary: ZEO address or FileStorage file')
    parser.add_argument('replica', metavar='REPLICA',
                        help='the replica: ZEO address or FileStorage file')
    parser.add_argument('--start', type=_tid_argument, metavar='TID',
                        help='begin at this tid (16 hex digits, 0x '
                             'optional), or the first one after it, instead '
                             'of the first transaction')
    parser.add_argument('--objects', action='store_true',
                        help='also load every object from both sides, as '
                             'of the replica\'s last transaction, and '
                             'compare them (on by itself when either '
                             'history was packed)')
    parser.add_argument('--primary-blob-dir', metavar='DIR',
                        help='the blob directory of a PRIMARY file, to '
                             'compare blob files too (ZEO servers with '
                             'blobs are compared without it)')
    parser.add_argument('--replica-blob-dir', metavar='DIR',
                        help='the blob directory of a REPLICA file')
    parser.add_argument('--storage', default='1', metavar='NAME',
                        help='ZEO storage name on both servers (default '
                             '%(default)s)')
    add_timeout(parser, DEFAULT_TIMEOUT, 'give up on a ZEO server that '
                'cannot be reached within this time', '-t')
    parser.add_argument('-q', '--quiet', action='store_true',
                        help='print nothing when the histories agree')
    parser.add_argument('-v', '--verbose', action='store_true',
                        help='log (ZEO client, FileStorage) to stderr')
    return parser.parse_args(argv)


def _setup_logging(verbose):
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format='%(asctime)s %(levelname)s %(name)s %(message)s')
    else:
        # The ZEO client logs its reconnection attempts: keep them (and
        # logging's last-resort handler) off the command's output.
        root.addHandler(logging.NullHandler())


def _report_history(report, primary, replica, out):
    """Lines describing a history comparison that found no divergence."""
    if report.compared:
        out('OK: %d transactions agree, %s to %s' % (
            report.compared, format_tid(report.first_tid),
            format_tid(report.last_tid)))
    else:
        out('OK: no transactions to compare')
    if any(report.packed):
        out('packed history on the %s: %d transactions compared as packed,'
            ' %d found on one side only' % (
                ' and the '.join(role for role, packed in zip(
                    ('primary', 'replica'), report.packed) if packed),
                report.packed_compared, report.one_sided))
    if not report.behind:
        out('replica up to date with the primary')
        return
    replica_last = report.last_tid or (
        replica.last_tid if replica.last_tid != z64 else None)
    if replica_last is None:
        out('replica behind the primary by %d transactions (the replica '
            'is empty); primary last transaction %s' % (
                report.behind, format_tid(report.primary_last)))
    else:
        out('replica behind the primary by %d transactions, %.3f seconds; '
            'primary last transaction %s' % (
                report.behind,
                tid_time(report.primary_last) - tid_time(replica_last),
                format_tid(report.primary_last)))


def verify(args, out):
    """Run the comparison; the exit status.  Raises VerifyError."""
    # The replica first: its snapshot must not be newer than the primary's.
    replica = open_source('replica', args.replica, args.storage,
                          args.timeout, args.replica_blob_dir)
    try:
        primary = open_source('primary', args.primary, args.storage,
                              args.timeout, args.primary_blob_dir)
        try:
            return _verify(args, primary, replica, out)
        finally:
            primary.close()
    finally:
        replica.close()


def _verify(args, primary, replica, out):
    blobs = BlobComparison(primary, replica)
    report = compare_histories(primary, replica, args.start, blobs)
    if report.divergence:
        tid, what = report.divergence
        print('DIVERGED at transaction %s: %s' % (format_tid(tid), what))
        out('%d transactions agreed before it' % report.compared)
        return DIVERGE
    _report_history(report, primary, replica, out)
    if blobs.compared:
        out('%d blob files agree (size and sha256)' % blobs.compared)
    if blobs.unchecked:
        out('%d blob records whose files were not compared: the %s' % (
            blobs.unchecked, ' and the '.join(
                side.role for side in (primary, replica)
                if not side.has_blobs) + ' has no blobs here (a file needs '
            '--primary-blob-dir / --replica-blob-dir)'))
    objects = args.objects
    if any(report.packed) and not objects:
        # History alone no longer proves the current state.
        out('comparing every object too (--objects), as history was packed')
        objects = True
    if objects:
        at = report.last_tid or replica.last_tid
        if at == z64:
            out('OK: no objects to compare (the replica is empty)')
            return AGREE
        found = compare_objects(primary, replica, at, report.max_oid,
                                report.packed)
        if found.difference:
            oid, what = found.difference
            print('DIVERGED: object %s as of %s: %s' % (
                format_oid(oid), format_tid(at), what))
            out('%d objects agreed before it' % found.agreed)
            return DIVERGE
        out('OK: %d objects agree as of %s%s' % (
            found.agreed, format_tid(at),
            '; %d absent on a packed side only (garbage-collected by its '
            'pack)' % found.collected if found.collected else ''))
    return AGREE


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging(args.verbose)
    out = (lambda line: None) if args.quiet else print
    try:
        return verify(args, out)
    except VerifyError as exc:
        print('zrsd-verify: %s' % exc, file=sys.stderr)
        return ERROR
    except Exception:
        # Exit status 1 would read as "diverged": an unexpected failure
        # means "could not verify".
        traceback.print_exc()
        return ERROR


if __name__ == '__main__':
    sys.exit(main())
