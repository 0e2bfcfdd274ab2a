"""What the command-line tools share: the parser (with `--version`), the
timeout option, and argparse types."""
import argparse

from zrsd.version import version


def command_parser(prog, description, usage=None, epilog=None):
    """An `ArgumentParser` for one of zrsd's commands: its `--help` keeps
    the paragraphs of `description` and `epilog`; it has `--version`."""
    parser = argparse.ArgumentParser(
        prog=prog, usage=usage, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version',
                        version='%(prog)s ' + version())
    return parser


def add_timeout(parser, default, help, *flags, positive=True):
    """The `--timeout SECONDS` option (and `flags`, e.g. '-t')."""
    parser.add_argument(*flags, '--timeout', default=default,
                        type=positive_seconds if positive else seconds,
                        metavar='SECONDS',
                        help=help + ' (default %(default)s)')


def seconds(text):
    """A duration of zero seconds or more."""
    return _seconds(text, minimum_exclusive=False)


def positive_seconds(text):
    """A duration of more than zero seconds."""
    return _seconds(text, minimum_exclusive=True)


def _seconds(text, minimum_exclusive):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0 or (minimum_exclusive and value == 0):
        raise argparse.ArgumentTypeError('not a %s number of seconds: %r' % (
            'positive' if minimum_exclusive else 'non-negative', text))
    return value
