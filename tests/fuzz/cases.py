"""The case generator of the secondary side (and of the in-process layer):
each case breaks a valid stream in one way, and says what a correct replica
does with it.  Byte and frame mutations are here; the synthetic bad parts,
with correct checksums, in `synthetic`."""
import os
import random
import struct

from . import synthetic
from harness.stream import Stream, wire

from .streams import committed

WINDOW_NEED = 6     # source txns a case may need after its start


class Case:
    """One generated case: the wire bytes and what a correct replica does.

    `expect` is 'reject' (exactly one ERROR, naming `reason` if set),
    'close' (no ERROR: the stream just ends) or 'any' (either).
    `commits` is how many transactions after the start it must commit.
    """

    def __init__(self, lane, number, kind, start, wire, commits, expect,
                 reason=None, detail=''):
        self.lane, self.number, self.kind = lane, number, kind
        self.start, self.wire, self.commits = start, wire, commits
        self.expect, self.reason, self.detail = expect, reason, detail

    def describe(self):
        return '%s case %d (%s%s) from source index %d: %d bytes, expect ' \
            '%s%s, %d commits' % (
                self.lane, self.number, self.kind,
                ' ' + self.detail if self.detail else '', self.start,
                len(self.wire), self.expect,
                ' %r' % self.reason if self.reason else '', self.commits)


BYTE_KINDS = ['bitflip', 'insert', 'delete', 'overwrite', 'truncate',
              'splice', 'length']
FRAME_KINDS = ['dup-frame', 'dup-C', 'drop-frame', 'drop-C', 'drop-T',
               'dup-T', 'swap-frames', 'move-frame']
LEGACY_KINDS = ['legacy-dup-C', 'legacy-drop-C', 'legacy-drop-T',
                'legacy-dup-T', 'legacy-truncate']
SYNTHETIC_KINDS = [
    'hostile-message', 'hostile-message', 'hostile-message',
    'hostile-extension', 'hostile-field', 'random-global', 'lower-tid',
    'equal-tid', 'record-tid', 'bad-field', 'bad-field', 'bad-checksum',
    'empty-message', 'oversized-prefix', 'big-prefix-close',
    'negative-nblocks', 'overlong-field', 'overlong-global']
PLAIN_ONLY = ['blob-to-plain']
BLOB_ONLY = ['huge-nblocks', 'huge-nblocks', 'huge-nblocks-big-block']


class Template:
    """The valid stream one case breaks.

    `prefix`: the 0-2 transactions replayed intact after the start;
    `window`: the 1-3 that follow, where the case breaks something;
    `valid`: the `Stream` of both, `valid_wire` its bytes;
    `mark_frames`, `mark`: the frame index and the wire offset where the
    window begins.
    """

    def __init__(self, rng, number, source, start, prefix, window, legacy):
        self.rng, self.number = rng, number
        self.start, self.start_tid = start, source.tid(start)
        self.prefix, self.window, self.legacy = prefix, window, legacy
        self.valid = Stream(self.start_tid, legacy)
        for txn in prefix:
            self.valid.transaction(txn)
        self.mark_frames, self.mark = len(self.valid.frames), self.valid.size
        for txn in window:
            self.valid.transaction(txn)
        self.valid_wire = self.valid.wire()


class CaseGenerator:
    """Cases for one lane (see the package docstring)."""

    def __init__(self, source, lane, seed, markers):
        self.source = source
        self.lane = lane
        self.seed = seed
        self.markers = markers
        menu = BYTE_KINDS * 2 + FRAME_KINDS + SYNTHETIC_KINDS * 2
        # Legacy streams carry no blobs: not for the blob lane.
        if source.blob_dir is not None:
            menu += BLOB_ONLY * 2
        else:
            menu += PLAIN_ONLY * 2 + LEGACY_KINDS
        self.menu = menu

    def rng(self, number):
        return random.Random('%s/%s/%d' % (self.seed, self.lane, number))

    def marker(self, number):
        return os.path.join(self.markers, '%s-%d' % (self.lane, number))

    def case(self, number, start):
        """Case `number` for a replica holding `start` source transactions."""
        rng = self.rng(number)
        txns = self.source.txns
        available = len(txns) - start
        assert available >= 1
        a = min(rng.choice([0, 0, 0, 1, 1, 2]), available - 1)
        b = min(rng.randint(1, 3), available - a)
        kind = rng.choice(self.menu)
        template = Template(rng, number, self.source, start,
                            txns[start:start + a],
                            txns[start + a:start + a + b],
                            kind.startswith('legacy-'))
        if kind in BYTE_KINDS:
            wire, expect, reason, detail = mutate_bytes(kind, template)
        elif kind in FRAME_KINDS or template.legacy:
            wire, expect, reason, detail = mutate_frames(kind, template)
        else:
            wire, expect, reason, detail = synthetic.build(
                kind, template, self.source, self.marker(number))
        valid = template.valid
        commits = a + committed(template.valid_wire, valid.commits[a:], wire)
        return Case(self.lane, number, kind, start, wire, commits, expect,
                    reason, detail)


def mutate_bytes(kind, t):
    """Byte mutations of the window's wire bytes."""
    rng, wire, lo = t.rng, bytearray(t.valid_wire), t.mark
    hi = len(wire)
    expect, detail = 'any', ''
    if kind == 'bitflip':
        flips = [(rng.randrange(lo, hi), rng.randrange(8))
                 for _ in range(rng.randint(1, 3))]
        for pos, bit in flips:
            wire[pos] ^= 1 << bit
        detail = 'at %s' % ','.join(str(p - lo) for p, _ in flips)
    elif kind == 'insert':
        pos = rng.randint(lo, hi)
        wire[pos:pos] = rng.randbytes(rng.randint(1, 8))
        detail = 'at %d' % (pos - lo)
    elif kind == 'delete':
        pos = rng.randrange(lo, hi)
        del wire[pos:pos + rng.randint(1, 8)]
        detail = 'at %d' % (pos - lo)
    elif kind == 'overwrite':
        pos = rng.randrange(lo, hi)
        n = rng.randint(1, 16)
        wire[pos:pos + n] = rng.randbytes(n)
        detail = 'at %d' % (pos - lo)
    elif kind == 'truncate':
        pos = rng.randrange(lo, hi)
        del wire[pos:]
        expect, detail = 'close', 'at %d of %d' % (pos - lo, hi - lo)
    elif kind == 'splice':
        n = rng.randint(1, 64)
        src = rng.randrange(0, max(1, hi - n))
        chunk = bytes(wire[src:src + n])
        pos = rng.randint(lo, hi)
        wire[pos:pos] = chunk
        detail = '%d bytes from %d at %d' % (n, src, pos - lo)
    elif kind == 'length':
        starts = t.valid.starts[t.mark_frames:]
        pos = rng.choice(starts)
        (old,) = struct.unpack_from('>I', wire, pos)
        new = rng.choice([
            old + rng.randint(1, 4), max(0, old - rng.randint(1, 4)),
            rng.randrange(1 << 32), 0, old ^ (1 << rng.randrange(32))])
        if new == old:
            new = old + 1
        struct.pack_into('>I', wire, pos, new)
        detail = '%d -> %d' % (old, new)
    return bytes(wire), expect, None, detail


def mutate_frames(kind, t):
    """Frame mutations, with the checksums as the primary computed them."""
    rng = t.rng
    frames = list(t.valid.frames)
    lo = t.mark_frames
    window = list(range(lo, len(frames)))
    base = kind[len('legacy-'):] if t.legacy else kind
    expect, reason = 'any', None

    def pick(kinds):
        choices = [i for i in window if frames[i][0] in kinds]
        return rng.choice(choices)

    if base == 'truncate':
        pos = rng.randrange(t.mark, len(t.valid_wire))
        return t.valid_wire[:pos], 'close', None, 'at %d' % (
            pos - t.mark)
    if base == 'dup-frame':
        i = rng.choice(window)
        frames.insert(i + 1, frames[i])
        detail = 'frame %d (%s)' % (i - lo, frames[i][0])
    elif base == 'dup-C':
        i = pick({'C'})
        frames.insert(i + 1, frames[i])
        expect, reason = 'reject', 'unexpected C message'
        detail = 'frame %d' % (i - lo)
    elif base == 'dup-T':
        i = pick({'T'})
        frames.insert(i + 1, frames[i])
        expect, reason = 'reject', 'unexpected T message'
        detail = 'frame %d' % (i - lo)
    elif base == 'drop-frame':
        i = rng.choice(window)
        detail = 'frame %d (%s)' % (i - lo, frames[i][0])
        del frames[i]
    elif base == 'drop-C':
        i = pick({'C'})
        del frames[i]
        if i < len(frames):
            expect, reason = 'reject', 'unexpected T message'
        else:
            expect = 'close'
        detail = 'frame %d' % (i - lo)
    elif base == 'drop-T':
        i = pick({'T'})
        del frames[i]
        expect, reason = 'reject', 'message between transactions'
        detail = 'frame %d' % (i - lo)
    elif base == 'swap-frames':
        if len(window) < 2:
            return mutate_frames('dup-frame', t)
        i = rng.choice(window[:-1])
        frames[i], frames[i + 1] = frames[i + 1], frames[i]
        detail = 'frames %d, %d' % (i - lo, i + 1 - lo)
    elif base == 'move-frame':
        i = rng.choice(window)
        frame = frames.pop(i)
        j = rng.randint(lo, len(frames))
        frames.insert(j, frame)
        detail = 'frame %d to %d' % (i - lo, j - lo)
    else:
        raise ValueError(kind)
    return wire(frames), expect, reason, detail
