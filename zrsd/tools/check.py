"""`zrsd-check`: a Nagios plugin for replication lag.

Usage: zrsd-check [-w SECONDS] [-e SECONDS] [-m] [-t SECONDS] PRIMARY SECONDARY

Output and exit statuses are those of zc.zrs's `zrs-nagios`, so existing
Nagios/Icinga service definitions keep working:

- the lag of each storage is the time of the primary's last transaction
  minus the time of the secondary's last transaction;
- "Secondary up to date." / "Secondary behind primary by 2.5000 seconds",
  with " > N" appended when a threshold is passed; a storage other than
  `1` is named: "Secondary ('catalog') behind primary by ...";
- `-m` adds performance data: ``|'lag'=2.5000seconds`` (``'lagNAME'`` for
  a storage NAME other than `1`);
- exit 0 OK, 1 WARNING (lag > -w), 2 CRITICAL (lag > -e, the primary
  behind the secondary, a storage on one side only, a server that cannot
  be reached or read); at least one of -w, -e, -m is required, otherwise
  the usage is printed and the exit status is 2.

Both servers are asked over their ZEO port with ZEO's `ruok` status request
(what `zrs-nagios` does): one short exchange that reports every storage
with its last transaction id, without opening a ZEO client.  Unlike
`zrs-nagios`, a server that does not answer within `-t` seconds (default
10, per server) is CRITICAL instead of hanging, and a bare port number is
a port on 127.0.0.1 (for `zrs-nagios` it is a unix socket name).
"""
import json
import socket
import struct
import sys

from zrsd.tools.options import add_timeout, command_parser, seconds
from zrsd.network.sockets import parse_address
from zrsd.tids import tid_time

OK, WARNING, CRITICAL = 0, 1, 2

DEFAULT_TIMEOUT = 10.0
MAX_STATUS_SIZE = 16 << 20  # a status reply is a few hundred bytes a storage

USAGE = 'zrsd-check [options] PRIMARY_ADDRESS SECONDARY_ADDRESS'


class StatusError(Exception):
    """A server could not be reached or did not answer sensibly."""


def _read_frame(sock):
    """One ZEO message: 4-byte big-endian length, then the payload."""
    (size,) = struct.unpack('>I', _read_exactly(sock, 4))
    if size > MAX_STATUS_SIZE:
        raise StatusError('reply of %d bytes is too large' % size)
    return _read_exactly(sock, size)


def _read_exactly(sock, size):
    chunks = []
    while size:
        data = sock.recv(min(size, 65536))
        if not data:
            raise StatusError('connection closed by the server')
        chunks.append(data)
        size -= len(data)
    return b''.join(chunks)


def ask_status(text, role, timeout=DEFAULT_TIMEOUT):
    """The `ruok` status of the ZEO server at `text`: {storage: {...}}.

    `role` ('primary' or 'secondary') names the server in errors.
    """
    family, address = parse_address(text)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError as exc:
            raise StatusError("Can't connect to %s at %r: %s"
                              % (role, text, exc))
        try:
            sock.sendall(struct.pack('>I', 4) + b'ruok')
            _read_frame(sock)  # the server's protocol announcement
            status = json.loads(_read_frame(sock).decode('ascii'))
            if not isinstance(status, dict):
                raise ValueError('not a mapping of storages')
        except (OSError, ValueError, StatusError) as exc:
            raise StatusError("Can't read the status of %s at %r: %s"
                              % (role, text, exc))
    finally:
        sock.close()
    return status


def last_commit_times(text, role, timeout=DEFAULT_TIMEOUT):
    """{storage name: time of its last transaction (seconds since epoch)}."""
    times = {}
    for name, status in ask_status(text, role, timeout).items():
        try:
            tid = bytes.fromhex(status['last-transaction'])
            times[name] = tid_time(tid)
        except (TypeError, KeyError, ValueError) as exc:
            raise StatusError(
                "Can't read the status of %s at %r: bad last transaction "
                "of storage %r (%s)" % (role, text, name, exc))
    return times


def _threshold(value):
    # Shown as typed: "> 5" for 5, "> 2.5" for 2.5.
    return '%d' % value if value == int(value) else repr(value)


def evaluate(primary, secondary, warning=0, error=0, metrics=False):
    """(output lines, exit status) for the last commit times of each side.

    A threshold of 0 is not checked.
    """
    if not primary and not secondary:
        return ['No storages'], WARNING
    lines = []
    perfdata = []
    status = OK
    for name in sorted(primary):
        label = '' if name == '1' else ' (%r)' % name
        if name not in secondary:
            lines.append('Storage %r in primary, but not secondary' % name)
            status = CRITICAL
            continue
        lag = primary[name] - secondary[name]
        if metrics:
            perfdata.append("'lag%s'=%.4fseconds"
                            % ('' if name == '1' else name, lag))
        if lag < 0:
            lines.append('Primary%s behind secondary by %s seconds'
                         % (label, lag))
            status = CRITICAL
        elif lag == 0:
            lines.append('Secondary%s up to date.' % label)
        else:
            line = 'Secondary%s behind primary by %.4f seconds' % (label, lag)
            if error and lag > error:
                line += ' > %s' % _threshold(error)
                status = CRITICAL
            elif warning and lag > warning:
                line += ' > %s' % _threshold(warning)
                status = max(status, WARNING)
            lines.append(line)
    for name in sorted(secondary):
        if name not in primary:
            lines.append('Storage %r in secondary, but not primary' % name)
            status = CRITICAL
    # Performance data: the first item on the first line, the others on
    # the last line (zrs-nagios's layout).
    if perfdata:
        lines[0] += '|' + perfdata[0]
        if len(perfdata) > 1:
            if len(lines) == 1:
                lines.append('')
            lines[-1] += '| ' + '\n '.join(perfdata[1:])
    return lines, status


def make_parser():
    parser = command_parser(
        'zrsd-check', usage=USAGE,
        description='Nagios plugin: the replication lag of a ZRS secondary '
                    '(output and exit\nstatuses of zc.zrs\'s zrs-nagios). '
                    'The lag of each storage is the time of\nthe primary\'s '
                    'last transaction minus the secondary\'s, asked with '
                    'ZEO\'s\nstatus request on both ZEO ports.',
        epilog='Exit status: 0 OK, 1 WARNING (lag over -w), 2 CRITICAL '
               '(lag over -e, the primary\nbehind the secondary, a storage '
               'on one side only, a server that cannot be\nreached) or a '
               'usage error.  At least one of -w, -e, -m is required.\n\n'
               'Example: zrsd-check -w 5 -e 60 -m primary.example:8100 '
               '127.0.0.1:8100')
    parser.add_argument('-m', '--output-metrics', action='store_true',
                        help='output the replication lag as performance '
                             'data')
    parser.add_argument('-w', '--warning', type=seconds, default=0,
                        metavar='SECONDS', help='warning lag, in seconds')
    parser.add_argument('-e', '--error', type=seconds, default=0,
                        metavar='SECONDS', help='critical lag, in seconds')
    add_timeout(parser, DEFAULT_TIMEOUT, 'give up on a server that does not '
                'answer within this time', '-t', positive=False)
    parser.add_argument('addresses', nargs='*', metavar='ADDRESS',
                        help='the ZEO address of the primary, then of the '
                             'secondary: host:port, [ipv6]:port, port (on '
                             '127.0.0.1) or a unix socket path')
    return parser


def _usage_error(parser, text):
    # zrs-nagios prints its usage on stdout and exits CRITICAL (2, also
    # argparse's usage-error status): the same, and why on stderr.
    print('Usage: ' + USAGE)
    print('%s: error: %s (see --help)' % (parser.prog, text),
          file=sys.stderr)
    return CRITICAL


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.addresses) != 2:
        return _usage_error(parser, 'two addresses are required, the '
                            'primary\'s and the secondary\'s')
    if not (args.output_metrics or args.warning or args.error):
        return _usage_error(parser, 'at least one of -w, -e, -m is required')
    primary_address, secondary_address = args.addresses
    try:
        # zrs-nagios's order: an unreachable secondary is reported first.
        secondary = last_commit_times(secondary_address, 'secondary',
                                      args.timeout)
        primary = last_commit_times(primary_address, 'primary', args.timeout)
    except StatusError as exc:
        print(exc)
        return CRITICAL
    lines, status = evaluate(primary, secondary, args.warning, args.error,
                             args.output_metrics)
    print('\n'.join(lines))
    return status


if __name__ == '__main__':
    sys.exit(main())
