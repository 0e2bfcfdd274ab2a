"""Transaction ids for people: hex, and the UTC time a tid stands for."""
from ZODB.TimeStamp import TimeStamp


def describe_tid(tid):
    """A tid as hex, for log lines ('none' for None)."""
    return tid.hex() if tid is not None else 'none'


def tid_time(tid):
    """The commit time a tid stands for, in seconds since the epoch."""
    return TimeStamp(tid).timeTime()


def format_tid(tid):
    """16 hex digits and the UTC time the tid stands for."""
    return '%s (%s UTC)' % (tid.hex(), TimeStamp(tid))
