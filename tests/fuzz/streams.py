"""The stream a primary sends on one connection (`Builder`), and the
oracle: how many of its transactions a correct replica commits when the
stream arrives broken (`committed`)."""
import hashlib
import io
import pickle
import struct

from zrsd import protocol as zrs

from .pickles import message

MAX_FRAME = zrs.DEFAULT_MAX_FRAME   # the replicas run with the default


class Builder:
    """The frames a primary sends on one connection from `start_tid`.

    Keeps the running md5 (payloads only, as the protocol says) and the
    wire offset where each frame ends; `raw` bytes go out unframed and
    unchecksummed.
    """

    def __init__(self, start_tid, legacy=False):
        self.md5 = hashlib.md5(start_tid)
        self.legacy = legacy
        self.frames = []     # (kind, payload); kind 'raw': bytes as they are
        self.size = 0
        self.commits = []    # (start, end) wire offsets of each C frame

    def frame(self, kind, payload, checksum=True):
        if checksum:
            self.md5.update(payload)
        self.frames.append((kind, payload))
        start = self.size
        self.size += 4 + len(payload)
        if kind == 'C':
            self.commits.append((start, self.size))
        return self

    def raw(self, data):
        self.frames.append(('raw', data))
        self.size += len(data)
        return self

    def message(self, kind, data):
        return self.frame(kind, message(kind, data))

    def begin(self, txn, tid=None):
        if tid is None:
            return self.frame('T', txn.begin)
        return self.message('T', (tid, txn.status, txn.user,
                                  txn.description, txn.extension))

    def records(self, txn, count=None):
        """Frames of the first `count` records of `txn` (all: None)."""
        records = range(len(txn.records) if count is None else count)
        for r in records:
            for kind, payload in txn.record_frames(r, self.legacy):
                self.frame(kind, payload)
        return self

    def commit(self, digest=None):
        if self.legacy:
            return self.message('C', ())
        return self.message('C', (digest or self.md5.digest(),))

    def txn(self, txn, digest=None):
        return self.begin(txn).records(txn).commit(digest)

    def wire(self, frames=None):
        return serialize(self.frames if frames is None else frames)


def serialize(frames):
    parts = []
    for kind, payload in frames:
        if kind != 'raw':
            parts.append(struct.pack('>I', len(payload)))
        parts.append(payload)
    return b''.join(parts)


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
