"""argparse types shared by the command-line tools."""
import argparse


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
