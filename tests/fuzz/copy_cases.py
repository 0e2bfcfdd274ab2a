"""Cases of the copy lanes (`copy_side`): what a fake zrsd primary answers
a new replica's ``zrsd-seed1`` query with.  Each case starts from the valid
copy of a source file (`CopySource.frames`: I, the file header, each
transaction's blob frames then its bytes in random frames, E) and breaks
it in one way the replica must notice, and says exactly how much of the
file a correct replica keeps (`Case.expected`, a transaction boundary).

The oracle: frames up to the first one that differs from the valid copy
arrived intact, so the transactions they complete are kept; the
transaction of that first different frame (its blob frames come first)
and everything after it are not.  Kinds only break what the replica can
check: a record's pickle, a status ' '/'p'/'u', a back pointer that still
points backwards, a blob's content or a blob left out entirely are
undetectable without unpickling, by design, and never generated (but see
'hostile-record': a pickle that must be copied, never loaded).
"""
import hashlib
import itertools
import random
import struct

from ZODB.FileStorage.format import (DATA_HDR, DATA_HDR_LEN, TRANS_HDR,
                                     TRANS_HDR_LEN)
from ZODB.utils import p64, u64, z64

from harness.stream import frame
from zrsd import seedprotocol as seed

from .pickles import HOSTILES

_TRANS, _DATA = struct.Struct(TRANS_HDR), struct.Struct(DATA_HDR)
MAX_FRAME = seed.CHUNK + 64          # the replica's frame limit

STRUCTURE = ['tid-back', 'tid-equal', 'status', 'tlen', 'trailer', 'serial',
             'tloc', 'tloc-all', 'vlen', 'prev-forward', 'header-lens',
             'bitflip', 'bitflip']
FRAMES = ['close', 'close', 'close-frame', 'drop', 'dup', 'swap', 'move',
          'junk-frame', 'empty-frame', 'huge-prefix', 'big-junk',
          'frame-length', 'refusal-mid', 'end-position', 'end-digest']
INFO = ['info-kind', 'info-size', 'info-end', 'info-flags', 'refusal',
        'file-header']
BLOBS = ['blob-oid', 'blob-tid', 'blob-extra', 'blob-size', 'blob-huge',
         'blob-in-txn']


class Txn:
    """One transaction of the file: [start, end), its tid, its data
    records' (offset, plen), its blob files (oid, tid, content)."""

    def __init__(self, data, start, txn):
        self.start, self.tid = start, txn.tid
        tid, tlen, _, ulen, dlen, elen = _TRANS.unpack_from(data, start)
        assert tid == txn.tid, (start, tid, txn.tid)
        self.end = start + tlen + 8
        self.records, at = [], start + TRANS_HDR_LEN + ulen + dlen + elen
        while at < start + tlen:
            plen = _DATA.unpack_from(data, at)[5]
            self.records.append((at, plen))
            at += DATA_HDR_LEN + (plen or 8)
        oids = set()
        self.blobs = [(r.oid, r.tid, r.blob) for r in txn.records
                      if r.blob is not None and not (
                          r.oid in oids or oids.add(r.oid))]
        self.oids = {r.oid for r in txn.records}


class CopySource:
    """A built fuzz source (`source.build_source`) and its file's bytes."""

    def __init__(self, source):
        with open(source.path, 'rb') as f:
            self.data = f.read()
        self.source, self.blobs = source, source.blob_dir is not None
        self.txns, pos = [], 4
        for txn in source.txns:
            self.txns.append(Txn(self.data, pos, txn))
            pos = self.txns[-1].end
        assert pos == len(self.data)
        self.boundaries = {0: z64, 4: z64}
        self.boundaries.update((t.end, t.tid) for t in self.txns)

    def start(self, group):
        """Where the file stands once every group before `group` (-2: I,
        -1: the file header, past the last transaction: E) is in."""
        return 0 if group < 0 else self.txns[group].start \
            if group < len(self.txns) else len(self.data)

    def frames(self, rng, data=None):
        """The valid copy: a list of (payload, group); the file's bytes and
        blobs cut in random frames."""
        data = data or self.data
        frames = [(seed.info(len(data), self.blobs), -2),
                  (b'D' + data[:4], -1)]
        for k, t in enumerate(self.txns):
            for oid, tid, content in t.blobs:
                frames.append((seed.blob_header(oid, tid, len(content)), k))
                frames += [(b'b' + p, k) for p in pieces(rng, content)]
            frames += [(b'D' + p, k) for p in pieces(rng, data[t.start:t.end])]
        frames.append((seed.end(len(data), hashlib.sha256(data).digest()),
                       len(self.txns)))
        return frames


def pieces(rng, data):
    """`data` in 1-4 non-empty pieces (mostly one, as a primary sends)."""
    if not data:
        return []
    if rng.random() < 0.6 or len(data) < 2:
        return [data]
    count = min(len(data) - 1, rng.randint(1, 3))
    cuts = sorted(rng.sample(range(1, len(data)), count))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


class Case:
    """One case: `wire` (what the fake primary sends after the handshake),
    `expected` (the bytes of `data` a correct replica keeps; anything from
    `lowest` to `highest` where the frame decoder may drop a recv()),
    `marker` (a hostile pickle's)."""

    def __init__(self, lane, number, kind, wire, expected, data, detail='',
                 marker=None):
        self.lane, self.number, self.kind = lane, number, kind
        self.wire, self.expected, self.data = wire, expected, data
        self.detail, self.marker = detail, marker
        self.lowest = self.highest = expected

    def describe(self):
        return '%s case %d (%s%s): %d bytes, keeps %s' % (
            self.lane, self.number, self.kind,
            ' ' + self.detail if self.detail else '', len(self.wire),
            self.expected if self.lowest == self.highest else
            '%d-%d' % (self.lowest, self.highest))


class CopyCases:
    """The cases of one lane (plain or blobs) of a source."""

    def __init__(self, copy_source, lane, seed_text, markers):
        self.cs, self.lane, self.seed, self.markers = (
            copy_source, lane, seed_text, markers)
        blobs = BLOBS * 2 if copy_source.blobs else ['blob-in-plain']
        self.menu = (['valid'] * 3 + STRUCTURE + FRAMES * 2 + INFO
                     + ['hostile-record'] + blobs)

    def case(self, number):
        rng = random.Random('%s/%s/%d' % (self.seed, self.lane, number))
        kind = rng.choice(self.menu)
        cs, data, marker = self.cs, self.cs.data, None
        expected, detail, cut = None, '', None
        if kind == 'hostile-record':
            data, marker, detail = self.hostile(rng, number)
        valid = cs.frames(rng, data)
        k = rng.randrange(len(cs.txns))
        frames = [p for p, _ in valid]
        at = [i for i, (_, g) in enumerate(valid) if g == k]  # k's frames
        if kind in ('valid', 'hostile-record'):
            pass
        elif kind in STRUCTURE or kind == 'file-header':
            if kind == 'file-header':
                k, at = -1, [1]
            raw, detail = self.structure(rng, kind, data, k)
            i = next(i for i in at if valid[i][0][:1] == b'D')
            frames[i:at[-1] + 1] = [b'D' + raw]
        elif kind in ('close', 'close-frame'):
            if kind == 'close':
                cut = rng.randrange(len(wire(frames)))
            else:
                frames = frames[:rng.randrange(len(frames))]
        elif kind in ('drop', 'dup', 'swap', 'move'):
            detail = self.reorder(rng, kind, valid, frames)
        elif kind in ('junk-frame', 'empty-frame', 'refusal-mid', 'big-junk'):
            i = rng.randrange(1, len(frames))
            junk = {'empty-frame': b'',
                    'refusal-mid': seed.refusal('packed, say'),
                    'big-junk': rng.choice(b'DbBE').to_bytes(1, 'big')
                    + rng.randbytes(rng.randint(MAX_FRAME - 1000,
                                                MAX_FRAME - 1)),
                    'junk-frame': rng.choice([b'', b'Q', b'I', b'P', b'X',
                                              b'B', b'E', b'N'])
                    + rng.randbytes(rng.choice([0, 1, 16, 24, 40, 100]))}
            frames.insert(i, junk[kind])
            detail = 'at frame %d' % i
            if kind == 'junk-frame' and frames[i][:1] == b'N':
                kind = 'refusal-mid'
        elif kind in ('huge-prefix', 'frame-length'):
            i = rng.randrange(len(frames))
            old = len(frames[i])
            new = (rng.choice([MAX_FRAME + 1, 0xFFFFFFFF])
                   if kind == 'huge-prefix' else
                   rng.choice([old + 1, old - 1, old + 8, 0, old * 2 + 5,
                               max(0, old - 40)]))
            new = old + 1 if new == old else new
            frames, tail = frames[:i], struct.pack('>I', new) + frames[i] \
                + wire(frames[i + 1:])
            detail = 'frame %d: %d -> %d' % (i, old, new)
            case = self.make(number, kind, valid, frames, data, detail,
                             tail=tail)
            # The frames decoded from the same recv() as the broken one are
            # lost (FrameDecoder raises); a longer last frame of a
            # transaction still completes it.
            case.lowest = 0
            if new > old and tail[4:5] == b'D':
                case.highest = cs.start(valid[i][1] + 1)
            return case
        elif kind in ('end-position', 'end-digest'):
            position, digest = struct.unpack('>Q32s', frames[-1][1:])
            frames[-1] = seed.end(
                position + rng.choice([-1, 1, 8, -len(data) + 4])
                if kind == 'end-position' else position,
                rng.randbytes(32) if kind == 'end-digest' else digest)
        elif kind in INFO:
            frames, expected, detail = self.info(rng, kind, frames, data)
        else:
            return self.blob(rng, number, kind, valid, frames, data)
        return self.make(number, kind, valid, frames, data, detail, cut,
                         expected, marker)

    def make(self, number, kind, valid, frames, data, detail='', cut=None,
             expected=None, marker=None, tail=b''):
        """The case; `expected` by the oracle unless given.  `cut`: close
        after that many wire bytes; `tail`: bytes after the frames (a
        broken frame: the oracle stops before it)."""
        delivered = frames if cut is None else [
            p for p, end in zip(frames, itertools.accumulate(
                4 + len(p) for p in frames)) if end <= cut]
        if cut is not None:
            detail = 'after %d of %d bytes' % (cut, len(wire(frames)))
        if expected is None:     # the first frame not the valid one
            i = next((i for i, (p, _) in enumerate(valid)
                      if i >= len(delivered) or delivered[i] != p), None)
            expected = self.cs.start(len(self.cs.txns) if i is None
                                     else valid[i][1])
        out = wire(frames) + tail
        return Case(self.lane, number, kind, out if cut is None
                    else out[:cut], expected, data, detail, marker)

    def structure(self, rng, kind, data, k):
        """Transaction `k`'s bytes with one checked field broken."""
        if k < 0:
            raw = bytearray(data[:4])
            raw[rng.randrange(4)] ^= 1 << rng.randrange(8)
            return bytes(raw), ''
        t = self.cs.txns[k]
        raw = bytearray(data[t.start:t.end])
        rec = rng.choice(t.records) if t.records else None
        r = rec[0] - t.start if rec else None      # its header in `raw`
        if kind in ('tid-back', 'tid-equal'):
            prev = self.cs.txns[k - 1].tid if k else z64
            tid = prev if kind == 'tid-equal' or prev == z64 else \
                rng.choice([z64, p64(u64(prev) - 1), self.cs.txns[0].tid])
            raw[:8] = tid
            for at, _ in t.records:          # consistently: only the
                raw[at - t.start + 8:at - t.start + 16] = tid  # order
            return bytes(raw), tid.hex()
        field = {'status': (16, 1), 'tlen': (8, 8), 'trailer': (len(raw) - 8,
                 8), 'header-lens': (17, 6), 'serial': (8, 8),
                 'tloc': (24, 8), 'vlen': (32, 2), 'prev-forward': (16, 8)}
        if kind == 'tloc-all':
            shift = rng.choice([-1, 1, -t.start, 1 << 40])
            for at, _ in t.records:
                a = at - t.start + 24
                raw[a:a + 8] = p64(max(0, t.start + shift))
            return bytes(raw), 'by %d' % shift
        if kind == 'bitflip':
            spots = [(0, 8)] * bool(t.records) + [
                (8, 8), (16, 1), (len(raw) - 8, 8)] + [
                (at - t.start + off, n) for at, _ in t.records
                for off, n in ((8, 8), (24, 8), (32, 2))]
            a, n = rng.choice(spots)
            bit = rng.randrange(8 * n)
            raw[a + bit // 8] ^= 1 << (bit % 8)
            return bytes(raw), 'byte %d bit %d' % (a + bit // 8, bit % 8)
        if kind in ('serial', 'tloc', 'vlen', 'prev-forward') and r is None:
            kind = 'trailer'
        a, n = field[kind]
        a += r if kind in ('serial', 'tloc', 'vlen', 'prev-forward') else 0
        old = int.from_bytes(raw[a:a + n], 'big')
        if kind == 'status':
            new = rng.choice(b'cxP\0\xff')
        elif kind == 'prev-forward':
            new = t.start + rng.choice([0, 1, 1000, 1 << 40])
            if rec[1] == 0 and rng.random() < 0.5:   # the back pointer
                a = rec[0] - t.start + DATA_HDR_LEN  # instead
        elif kind == 'header-lens':
            new = rng.choice([0xFFFFFFFFFFFF, 0xFFFF00000000, 0xFFFF,
                              old + (len(raw) << 16)])
        else:
            new = rng.choice([old + 1, old - 1, 0, old ^ (1 << (8 * n - 1)),
                              rng.randrange(1 << (8 * n))])
        new %= 1 << 8 * n
        new = (old + 1) % (1 << 8 * n) if new == old else new
        raw[a:a + n] = new.to_bytes(n, 'big')
        return bytes(raw), '%s %d -> %d' % (kind, old, new)

    def reorder(self, rng, kind, valid, frames):
        """Drop, duplicate, swap or move a frame (not I).  Never a blob's
        content frame, nor a frame among its own transaction's (pieces of
        one transaction swapped, a blob left out or sent after its
        transaction: undetectable by design)."""
        def movable(i):
            p = frames[i]
            return p[:1] in b'DE' or (kind in ('drop', 'dup') and p[:1] == b'B'
                                      and struct.unpack('>Q', p[17:])[0])
        i = rng.choice([i for i in range(1, len(frames)) if movable(i)])
        own = [j for j, (_, g) in enumerate(valid) if g == valid[i][1]]
        if kind == 'drop':
            del frames[i]
        elif kind == 'dup':
            frames.insert(i + 1, frames[i])
        elif kind == 'swap':
            js = [j for j in (i - 1, i + 1) if 1 <= j < len(frames)
                  and movable(j) and j not in own]
            if not js:
                return self.reorder(rng, 'drop', valid, frames)
            j = rng.choice(js)
            frames[i], frames[j] = frames[j], frames[i]
            return 'frames %d, %d' % (i, j)
        else:
            j = rng.choice([j for j in range(1, len(frames) + 1)
                            if not own[0] <= j <= own[-1] + 1])
            frames.insert(j, frames[i])
            del frames[i + (j < i)]
            return 'frame %d to %d' % (i, j)
        return '%s frame %d' % (kind, i)

    def info(self, rng, kind, frames, data):
        """Break the first message (or the file header): the replica copies
        nothing unless it still reads an I that asks for a copy."""
        i_end, flags = struct.unpack('>QB', frames[0][1:])
        if kind == 'info-kind':
            frames[0] = rng.choice(b'QPDBbENX').to_bytes(1, 'big') \
                + frames[0][1:]
        elif kind == 'info-size':
            frames[0] = frames[0][:rng.choice([0, 1, 5, 9, 10])] + (
                b'\0' * rng.randint(1, 9) if rng.random() < 0.3 else b'')
            frames[0] += b'\0' * (len(frames[0]) == 10)
        elif kind == 'refusal':
            frames[:] = [seed.refusal(rng.choice(['packed', '\u00e9' * 2000,
                                                  '']))]
        elif kind == 'info-end':
            i_end = rng.choice([0, 1, 3, 4, len(data) - 1, len(data) + 1,
                                1 << 63, (1 << 64) - 1])
            frames[0] = seed.info(i_end, flags & 1)
            # A copy goes on to the E message, whatever I said.
            return frames, len(data) if i_end else 0, 'end %d' % i_end
        elif kind == 'info-flags':
            flags = rng.randrange(256)
            frames[0] = b'I' + struct.pack('>QB', i_end, flags)
            copies = self.cs.blobs or not flags & seed.HAS_BLOBS
            return frames, len(data) if copies else 0, 'flags %d' % flags
        return frames, 0, ''

    def blob(self, rng, number, kind, valid, frames, data):
        """Blob frames out of place, with wrong sizes or for oids that are
        not the next transaction's."""
        cs = self.cs
        with_blobs = [k for k, t in enumerate(cs.txns) if t.blobs]
        k = rng.choice(with_blobs if kind in ('blob-oid', 'blob-tid',
                                              'blob-size') else
                       range(len(cs.txns)))
        t = cs.txns[k]
        first = next(i for i, (_, g) in enumerate(valid) if g == k)
        d = next(i for i in range(first, len(valid))
                 if valid[i][0][:1] == b'D')
        other = rng.choice([oid for x in cs.txns for oid in sorted(x.oids)
                            if oid not in t.oids] + [b'\xff' * 8])
        detail = 'transaction %d' % k
        if kind in ('blob-oid', 'blob-tid', 'blob-size'):
            _, oid, tid, size = struct.unpack('>c8s8sQ', frames[first])
            if kind == 'blob-oid':
                oid = other
            elif kind == 'blob-tid':
                later = [x.tid for x in cs.txns[k + 1:]]
                tid = rng.choice(later + [p64(u64(tid) + 1), b'\xff' * 8,
                                          z64, cs.txns[k - 1].tid if k
                                          else z64])
                detail += ' tid %s' % tid.hex()
            else:
                new = rng.choice([0, max(0, size - 1), size + 1, size * 2 + 1])
                size = size + 1 if new == size else new
                detail += ' size %d' % size
            frames[first] = seed.blob_header(oid, tid, size)
        elif kind in ('blob-extra', 'blob-in-plain'):
            content = rng.randbytes(rng.choice([0, 1, 3000]))
            frames[d:d] = [seed.blob_header(other, t.tid, len(content))] + (
                [b'b' + content] if content else [])
        elif kind == 'blob-huge':
            frames[d:d] = [seed.blob_header(other, t.tid, rng.choice(
                [1 << 40, (1 << 64) - 1])), b'b' + rng.randbytes(5000)]
        elif kind == 'blob-in-txn':
            raw = frames[d][1:]
            cut = rng.randint(1, len(raw) - 1)
            frames[d:d + 1] = [b'D' + raw[:cut], seed.blob_header(
                other, t.tid, 1), b'bx', b'D' + raw[cut:]]
        return self.make(number, kind, valid, frames, data, detail)

    def hostile(self, rng, number):
        """The file with one record's pickle a hostile one of the same
        length (a structurally valid transaction: it is copied, and must
        never be loaded)."""
        marker = '%s/%s-%d' % (self.markers, self.lane, number)
        records = [(at, plen) for t in self.cs.txns for at, plen in t.records
                   if plen > 300]
        at, plen = rng.choice(records)
        hostile = rng.choice([h for h in HOSTILES if h.armed])
        payload = hostile.top(marker)
        assert len(payload) <= plen, (hostile.name, plen)
        data = bytearray(self.cs.data)
        start = at + DATA_HDR_LEN
        data[start:start + plen] = payload + b'.' * (plen - len(payload))
        return bytes(data), marker, hostile.name


def wire(payloads):
    return b''.join(frame(p) for p in payloads)
