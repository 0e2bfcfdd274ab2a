"""Comparing the current objects for `zrsd-verify --objects`.

`compare_objects` enumerates the oids of both sides' indexes (with
`record_iternext`), merged in oid order, and loads each object as of the
replica's last transaction from both sides, through each storage's load
path rather than its history; it returns an `ObjectsReport`.  Memory
stays bounded: one object of each side at a time.
"""
import heapq

from ZEO.Exceptions import ServerException
from ZODB.POSException import POSKeyError
from ZODB.utils import p64, u64

from .history import PRIMARY, REPLICA, describe_data
from .sides import reading


def iter_oids(source, last=None):
    """The oids in the index of `source`'s storage, ascending, up to `last`
    (None: all).

    It asks `record_iternext`, which loads each current record and raises
    POSKeyError (naming the oid) for an object whose creation was undone;
    the enumeration goes on after that oid.  Past the highest oid, the
    storage raises ValueError (which a ZEO server logs as an ERROR with a
    traceback): knowing `last` avoids asking.
    """
    next_oid = None
    with reading(source, 'listing the objects of'):
        while True:
            try:
                oid, _, _, next_oid = source.storage.record_iternext(
                    next_oid)
            except POSKeyError as exc:
                oid = exc.args[0]
                next_oid = p64(u64(oid) + 1)
            except (ValueError, ServerException) as exc:
                if _is_value_error(exc):
                    return  # nothing at or after next_oid ("empty tree")
                raise
            if last is not None and oid > last:
                return
            yield oid
            if next_oid is None or (last is not None and oid >= last):
                return


def _is_value_error(exc):
    # ZEO's client re-raises only some server exceptions as themselves;
    # a ValueError arrives as ServerException('builtins.ValueError', args).
    return isinstance(exc, ValueError) or (
        isinstance(exc, ServerException)
        and exc.args[:1] == ('builtins.ValueError',))


def _unique(oids):
    previous = None
    for oid in oids:
        if oid != previous:
            yield oid
            previous = oid


def state_before(source, oid, before):
    """(serial, data) of `oid` as of just before tid `before`; None when it
    did not exist then (or its creation was undone)."""
    with reading(source, 'loading an object from'):
        try:
            loaded = source.storage.loadBefore(oid, before)
        except POSKeyError:
            return None
    if loaded is None:
        return None
    data, serial, _ = loaded
    return serial, data


def _describe_state(state):
    if state is None:
        return 'absent'
    serial, data = state
    return 'serial %s, %s' % (serial.hex(), describe_data(data))


class ObjectsReport:
    """What comparing the objects found (a plain record).

    `agreed` objects loaded the same from both sides; `collected` were
    absent on a packed side only (see `compare_objects`); `difference` is
    None or (oid, what differs).
    """

    def __init__(self):
        self.agreed = 0
        self.collected = 0
        self.difference = None


def compare_objects(primary, replica, tid, max_oid=None,
                    packed=(False, False)):
    """Load every object of either side as of `tid` from both sides; an
    `ObjectsReport`.

    The oids of both indexes are merged in order, so an object missing on
    one side is found too.  `max_oid`, the highest oid in the history up to
    `tid` if known, ends the enumeration there: objects created later do
    not exist as of `tid` on either side.  `packed` says which sides
    (primary, replica) were packed: FileStorage's pack removes the objects
    that were unreachable at the pack time (garbage collection), so an
    object absent on a packed side only is counted as collected, not as a
    difference.
    """
    before = p64(u64(tid) + 1)
    oids = _unique(heapq.merge(iter_oids(primary, max_oid),
                               iter_oids(replica, max_oid)))
    report = ObjectsReport()
    for oid in oids:
        p_state = state_before(primary, oid, before)
        r_state = state_before(replica, oid, before)
        if p_state == r_state:
            if p_state is not None:
                report.agreed += 1
        elif (p_state is None and packed[PRIMARY]
              or r_state is None and packed[REPLICA]):
            report.collected += 1
        else:
            report.difference = (oid, 'primary %s; replica %s' % (
                _describe_state(p_state), _describe_state(r_state)))
            return report
    return report
