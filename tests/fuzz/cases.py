"""The case generator of the secondary side and of the in-process layer:
each case breaks a valid stream (built with `harness.stream.Stream`) in
one way, byte and frame mutations or synthetic bad parts with *correct*
checksums, and says what a correct replica does with it (the oracle,
`committed`)."""
import io
import os
import pickle
import random
import struct
from types import SimpleNamespace

from ZODB.utils import p64, u64, z64

from harness.stream import Stream, message, wire
from zrsd import protocol as zrs

from .pickles import (CALL, DANGEROUS_GLOBALS, G, HOSTILES, PLACEHOLDER, SG,
                      U, embed, random_name, touch)

MAX_FRAME = zrs.DEFAULT_MAX_FRAME   # the replicas run with the default
BLOCK = zrs.BLOB_BLOCK_SIZE
WINDOW_NEED = 6     # source txns a case may need after its start

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


class Case:
    """One generated case: the wire bytes and what a correct replica does.

    `expect` is 'reject' (exactly one ERROR, naming `reason` if set),
    'close' (no ERROR: the stream just ends) or 'any' (either);
    `commits`: how many transactions after the start it must commit.
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


class CaseGenerator:
    """Cases for one lane (see the package docstring)."""

    def __init__(self, source, lane, seed, markers):
        self.source, self.lane = source, lane
        self.seed, self.markers = seed, markers
        self.menu = BYTE_KINDS * 2 + FRAME_KINDS + SYNTHETIC_KINDS * 2 + (
            BLOB_ONLY * 2 if source.blob_dir is not None    # no legacy blobs
            else PLAIN_ONLY * 2 + LEGACY_KINDS)

    def case(self, number, start):
        """Case `number` for a replica holding `start` source transactions:
        a valid stream of the `prefix` (0-2 transactions replayed intact),
        then the `window` (the 1-3 where the case breaks something), from
        frame `mark_frames`, wire offset `mark`."""
        rng = random.Random('%s/%s/%d' % (self.seed, self.lane, number))
        txns = self.source.txns
        available = len(txns) - start
        assert available >= 1
        a = min(rng.choice([0, 0, 0, 1, 1, 2]), available - 1)
        b = min(rng.randint(1, 3), available - a)
        kind = rng.choice(self.menu)
        t = SimpleNamespace(rng=rng, start_tid=self.source.tid(start),
                            prefix=txns[start:start + a],
                            window=txns[start + a:start + a + b],
                            legacy=kind.startswith('legacy-'))
        t.valid = Stream(t.start_tid, t.legacy)
        for txn in t.prefix:
            t.valid.transaction(txn)
        t.mark_frames, t.mark = len(t.valid.frames), t.valid.size
        for txn in t.window:
            t.valid.transaction(txn)
        t.valid_wire = t.valid.wire()
        base = kind.removeprefix('legacy-')
        if base in BYTE_KINDS:
            wire, expect, reason, detail = mutate_bytes(base, t)
        elif base in FRAME_KINDS:
            wire, expect, reason, detail = mutate_frames(base, t)
        else:
            wire, expect, reason, detail = synthetic(
                kind, t, self.source, os.path.join(
                    self.markers, '%s-%d' % (self.lane, number)))
        commits = a + committed(t.valid_wire, t.valid.commits[a:], wire)
        return Case(self.lane, number, kind, start, wire, commits, expect,
                    reason, detail)


def mutate_bytes(kind, t):
    """Byte mutations of the window's wire bytes."""
    rng, wire, lo = t.rng, bytearray(t.valid_wire), t.mark
    hi, expect = len(wire), 'any'
    if kind == 'bitflip':
        flips = [(rng.randrange(lo, hi), rng.randrange(8))
                 for _ in range(rng.randint(1, 3))]
        for pos, bit in flips:
            wire[pos] ^= 1 << bit
        detail = 'at %s' % ','.join(str(p - lo) for p, _ in flips)
    elif kind in ('insert', 'delete', 'overwrite'):
        pos = rng.randint(lo, hi) if kind == 'insert' else \
            rng.randrange(lo, hi)
        n = rng.randint(1, 16 if kind == 'overwrite' else 8)
        wire[pos:pos + (0 if kind == 'insert' else n)] = \
            b'' if kind == 'delete' else rng.randbytes(n)
        detail = 'at %d' % (pos - lo)
    elif kind == 'truncate':
        pos = rng.randrange(lo, hi)
        del wire[pos:]
        expect, detail = 'close', 'at %d of %d' % (pos - lo, hi - lo)
    elif kind == 'splice':
        n = rng.randint(1, 64)
        src = rng.randrange(0, max(1, hi - n))
        pos = rng.randint(lo, hi)
        wire[pos:pos] = wire[src:src + n]
        detail = '%d bytes from %d at %d' % (n, src, pos - lo)
    elif kind == 'length':
        pos = rng.choice(t.valid.starts[t.mark_frames:])
        (old,) = struct.unpack_from('>I', wire, pos)
        new = rng.choice([
            old + rng.randint(1, 4), max(0, old - rng.randint(1, 4)),
            rng.randrange(1 << 32), 0, old ^ (1 << rng.randrange(32))])
        new = old + 1 if new == old else new
        struct.pack_into('>I', wire, pos, new)
        detail = '%d -> %d' % (old, new)
    return bytes(wire), expect, None, detail


def mutate_frames(kind, t):
    """Frame mutations, with the checksums as the primary computed them."""
    rng, frames, lo = t.rng, list(t.valid.frames), t.mark_frames
    window = list(range(lo, len(frames)))
    typed = kind[-2:] in ('-C', '-T')     # of a C or a T frame
    expect, reason = 'any', None
    if kind == 'swap-frames' and len(window) < 2:
        return mutate_frames('dup-frame', t)
    if kind == 'swap-frames':
        i = rng.choice(window[:-1])
        frames[i], frames[i + 1] = frames[i + 1], frames[i]
        return wire(frames), expect, reason, 'frames %d, %d' % (
            i - lo, i + 1 - lo)
    if kind == 'move-frame':
        i = rng.choice(window)
        j = rng.randint(lo, len(frames) - 1)
        frames.insert(j, frames.pop(i))
        return wire(frames), expect, reason, 'frame %d to %d' % (
            i - lo, j - lo)
    i = rng.choice([i for i in window
                    if not typed or frames[i][0] == kind[-1]])
    detail = 'frame %d' % (i - lo) + (
        '' if typed else ' (%s)' % frames[i][0])
    if kind.startswith('dup-'):
        frames.insert(i + 1, frames[i])
        if typed:
            expect, reason = 'reject', 'unexpected %s message' % kind[-1]
    elif kind.startswith('drop-'):
        del frames[i]
        if kind == 'drop-T':
            expect, reason = 'reject', 'message between transactions'
        elif kind == 'drop-C' and i < len(frames):
            expect, reason = 'reject', 'unexpected T message'
        elif kind == 'drop-C':
            expect = 'close'
    else:
        raise ValueError(kind)
    return wire(frames), expect, reason, detail


def synthetic(kind, t, source, marker):
    """A synthetic bad part with correct checksums: the prefix, some of
    the window intact, then one bad part in the next transaction `txn`.
    Returns (wire, expect, reason, detail) (see `Case`)."""
    rng, b = t.rng, Stream(t.start_tid)
    k = rng.randrange(len(t.window))
    for txn in t.prefix + t.window[:k]:
        b.transaction(txn)
    last_tid = ([t.start_tid] + [x.tid for x in t.prefix + t.window[:k]])[-1]
    txn = t.window[k]
    oid = txn.records[0].oid
    expect, reason, detail = 'reject', None, ''

    def inside(chance=1):
        """Maybe (with `chance`) open `txn` and send some of its records."""
        if chance == 1 or rng.random() < chance:
            b.begin_txn(txn).records(txn, rng.randint(0, len(txn.records)))

    if kind == 'hostile-message':
        hostile = rng.choice(HOSTILES)
        inside(0.5)
        b.payload(hostile.top(marker), 'M')
        reason, detail = hostile.reason, hostile.name
    elif kind == 'hostile-extension':
        # (Not the BUILD ones: they push an allowed object, which an
        # extension may hold.)
        hostile = rng.choice([h for h in HOSTILES if h.build and h.reason])
        ext = dict(txn.extension, evil=PLACEHOLDER)
        b.payload(embed(('T', (txn.tid, txn.status, txn.user,
                               txn.description, ext)),
                        hostile.build(marker)), 'T')
        reason, detail = hostile.reason, hostile.name
    elif kind == 'hostile-field':
        hostile = rng.choice([h for h in HOSTILES if h.build])
        inside()
        field = rng.choice(['S-oid', 'S-tid', 'S-data_txn', 'C',
                            'kind', 'B-nblocks', 'S-legacy-data'])
        X = PLACEHOLDER
        shape = {'S-oid': ('S', (X, txn.tid, '', None)),
                 'S-tid': ('S', (oid, X, '', None)),
                 'S-data_txn': ('S', (oid, txn.tid, '', X)),
                 'C': ('C', (X,)), 'kind': (X, ()),
                 'B-nblocks': ('B', (oid, txn.tid, '', None, X)),
                 'S-legacy-data': ('S', (oid, txn.tid, '', X, None))}[field]
        b.payload(embed(shape, hostile.build(marker)), 'M')
        reason, detail = hostile.reason, '%s in %s' % (hostile.name, field)
    elif kind == 'random-global':
        module, name = rng.choice(DANGEROUS_GLOBALS) if rng.random() < 0.6 \
            else (random_name(rng), random_name(rng))
        inside(0.5)
        reason = 'refused global %s.%s' % (module, name)
        if rng.random() < 0.5 and '\n' not in module + name:
            opcode = G(module, name)
            if not (module and name):
                reason = 'undecodable'   # an empty GLOBAL line
        else:
            opcode = SG(module, name)
        b.payload(CALL(opcode, U(touch(marker))) + b'.', 'M')
        detail = '%s.%s' % (module, name)
    elif kind in ('lower-tid', 'equal-tid'):
        tid = last_tid
        if kind == 'lower-tid' and last_tid != z64:
            tid = rng.choice([other.tid for other in source.txns
                              if other.tid < last_tid]
                             + [z64, p64(u64(last_tid) - 1)])
        b.begin_txn(txn, tid)
        for r in txn.records:   # blobs too: S, not B
            b.store(r.oid, tid, r.data, r.data_txn)
        b.commit()
        reason, detail = 'non-increasing tid', tid.hex()
    elif kind == 'record-tid':
        inside()
        b.store(oid, rng.choice([last_tid, z64, p64(u64(txn.tid) + 1),
                                 rng.randbytes(8)]), b'record data')
        reason = 'record tid'
    elif kind == 'bad-field':
        if rng.choice(['T', 'in']) == 'in':
            inside()
            shapes = bad_in_transaction(txn, oid)
        else:
            shapes = bad_begin(txn)
        detail, payload, reason = rng.choice(shapes)
        b.payload(payload, 'M')
    elif kind == 'bad-checksum':
        b.transaction(txn, digest=rng.randbytes(16))
        reason = 'checksum mismatch'
    elif kind == 'empty-message':
        inside(0.5)
        b.payload(b'', 'M')
        reason = 'undecodable'
    elif kind in ('oversized-prefix', 'big-prefix-close'):
        inside(0.3 if kind == 'oversized-prefix' else 0.5)
        if kind == 'oversized-prefix':
            length = rng.choice([MAX_FRAME + 1, 0xFFFFFFFF,
                                 rng.randint(MAX_FRAME + 1, 0xFFFFFFFF)])
            reason, junk = 'too large', 100
        else:
            length = rng.randint(1 << 20, MAX_FRAME)
            expect, junk = 'close', 1000
        b.raw(struct.pack('>I', length) + rng.randbytes(
            rng.randint(0, junk)))
        detail = str(length)
    elif kind == 'negative-nblocks':
        inside()
        count = rng.choice([-1, -(10 ** 12), True, 1.5, '3', None])
        b.message('B', (oid, txn.tid, '', None, count))
        reason, detail = 'block count', repr(count)
    elif kind == 'overlong-field':
        size = rng.choice([5000, 100000])
        field = rng.choice(['tid', 'status'])
        b.message('T', ((b'\x01' * size, ' ') if field == 'tid' else
                        (txn.tid, 'x' * size)) + (b'', b'', {}))
        reason, detail = 'bad T message', '%s of %d' % (field, size)
    elif kind == 'overlong-global':
        name = 'x' * rng.choice([5000, 100000])
        b.payload(CALL(G('os', name), U(touch(marker))) + b'.', 'M')
        reason, detail = 'refused global', 'name of %d' % len(name)
    elif kind == 'blob-to-plain':
        b.begin_txn(txn).store_blob(oid, txn.tid, txn.records[0].data
                                    or b'x', [b'blob content']).commit()
        reason = 'blob-dir'
    elif kind in ('huge-nblocks', 'huge-nblocks-big-block'):
        inside()
        blob_rec = next((r for r in txn.records if r.blob is not None),
                        txn.records[0])
        b.message('B', (blob_rec.oid, txn.tid, '', None, 10 ** 12))
        b.payload(blob_rec.data or b'')
        for _ in range(rng.randint(0, 4)):
            b.payload(rng.randbytes(rng.choice([1, 100, BLOCK])), 'block')
        if kind == 'huge-nblocks':
            expect = 'close'
        else:
            b.payload(rng.randbytes(BLOCK + rng.randint(1, 100)), 'block')
            reason = 'exceeds'
    else:
        raise ValueError(kind)
    return b.wire(), expect, reason, detail


def bad_begin(txn):
    """Malformed first messages of a transaction: (name, payload, reason)."""
    tid = txn.tid
    bad_t = [   # (name, T fields), each a 'bad T message'
        ('short tid', (tid[:7], ' ', b'', b'', {})),
        ('str tid', (tid.hex(), ' ', b'', b'', {})),
        ('long status', (tid, '  ', b'', b'', {})),
        ('int status', (tid, 32, b'', b'', {})),
        # Only committed (' ') and packed ('p') transactions are streamed:
        # 'c' (checkpoint) would truncate the file at the next open.
        ('checkpoint status', (tid, 'c', b'', b'', {})),
        ('undone status', (tid, 'u', b'', b'', {})),
        ('bytes status', (tid, b'x', b'', b'', {})),
        ('int user', (tid, ' ', 5, b'', {})),
        ('list extension', (tid, ' ', b'', b'', [])),
        ('none extension', (tid, ' ', b'', b'', None)),
        ('4 fields', (tid, ' ', b'', b'')),
        ('6 fields', (tid, ' ', b'', b'', {}, 1))]
    pair = 'not a (type, data) pair'
    return [(name, message('T', fields), 'bad T message')
            for name, fields in bad_t] + [
        ('unknown type', message('Z', (tid,)), 'unknown type'),
        ('bytes type', message(b'T', (tid, ' ', b'', b'', {})),
         'unknown type'),
        ('list data', pickle.dumps(('T', [tid, ' ', b'', b'', {}]), 1), pair),
        ('1-tuple', pickle.dumps(('T',), 1), pair),
        ('list message', pickle.dumps(['T', ()], 1), pair),
        ('int', pickle.dumps(7, 1), pair),
        ('list type', pickle.dumps(([], ()), 1), None),
        ('dict type', pickle.dumps(({}, ()), 1), None),
        ('not a pickle', b'\xde\xad\xbe\xef garbage', 'undecodable'),
        ('truncated pickle', message('T', (
            tid, txn.status, txn.user, txn.description, txn.extension))[:-3],
         'undecodable'),
        ('deep nesting', b'(' * 50000 + b'.', 'undecodable'),
        ('protocol 5', pickle.dumps(('T', (tid, ' ', b'', b'', {})), 5)
         [:-1] + b'\xff.', 'undecodable')]


def bad_in_transaction(txn, oid):
    """Malformed messages inside a transaction: (name, payload, reason)."""
    tid = txn.tid
    return [(name, message(kind, fields), reason)
            for name, kind, fields, reason in (
        ('short oid', 'S', (oid[:7], tid, '', None), 'bad S message'),
        ('int oid', 'S', (1, tid, '', None), 'bad S message'),
        ('version', 'S', (oid, tid, 'v1', None), 'versions'),
        ('short data_txn', 'S', (oid, tid, '', b'short'), 'bad S message'),
        ('str legacy data', 'S', (oid, tid, '', 'text', None),
         'bad S message'),
        ('3 fields', 'S', (oid, tid, ''), 'bad S message'),
        ('6 fields', 'S', (oid, tid, '', None, None, None), 'bad S message'),
        ('B 4 fields', 'B', (oid, tid, '', None), 'bad B message'),
        ('short digest', 'C', (b'short',), 'bad C message'),
        ('str digest', 'C', ('x' * 16,), 'bad C message'),
        ('C 2 fields', 'C', (b'\0' * 16, 1), 'bad C message'))]


def common_prefix(a, b):
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n      # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
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
