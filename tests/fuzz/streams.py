"""The oracle: how many of the transactions of a primary's stream (built
with `harness.stream.Stream`) a correct replica commits when the stream
arrives broken (`committed`)."""
import io
import pickle
import struct

from zrsd import protocol as zrs

MAX_FRAME = zrs.DEFAULT_MAX_FRAME   # the replicas run with the default


def common_prefix(a, b):
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n      # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class _OracleUnpickler(pickle.Unpickler):
    """Just enough to read our own C messages back (bytes as protocol 1
    writes them); nothing else resolves."""

    def find_class(self, module, name):
        if (module, name) == ('_codecs', 'encode'):
            return lambda text, encoding: text.encode('latin-1')
        raise pickle.UnpicklingError('no globals here')

    def persistent_load(self, pid):
        raise pickle.UnpicklingError('no persistent ids here')


def _same_message(payload, original):
    try:
        return _OracleUnpickler(io.BytesIO(payload)).load() == \
            _OracleUnpickler(io.BytesIO(original)).load()
    except Exception:
        return False


def committed(valid_wire, commits, wire):
    """How many of the C frames at `commits` ((start, end) offsets in
    `valid_wire`) a correct replica commits when it receives `wire`.

    Every C frame that `wire` has intact commits (everything before it is
    intact too).  The first C frame the mutation reaches still commits if
    the frame that arrives in its place means the same message: its
    checksum covers the payloads before it, not itself, and a pickle ends
    at its STOP opcode (a longer length prefix, a changed memo index).
    After that, every payload differs and every digest mismatches.
    """
    d = common_prefix(valid_wire, wire)
    count = 0
    for start, end in commits:
        if end <= d:
            count += 1
            continue
        if start <= d and len(wire) >= start + 4:
            (length,) = struct.unpack_from('>I', wire, start)
            if length <= MAX_FRAME and start + 4 + length <= len(wire) \
                    and _same_message(wire[start + 4:start + 4 + length],
                                      valid_wire[start + 4:end]):
                count += 1
        break
    return count
