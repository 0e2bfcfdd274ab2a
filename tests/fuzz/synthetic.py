"""Synthetic bad parts: transactions broken with *correct* checksums, so
that only the check under test can stop them (hostile pickles, malformed
fields, non-increasing tids, wrong digests, bad length prefixes, blobs)."""
import pickle
import struct

from ZODB.utils import p64, u64, z64

from zrsd.protocol import BLOB_BLOCK_SIZE as BLOCK

from harness.stream import Stream, message

from .pickles import (CALL, DANGEROUS_GLOBALS, G, HOSTILES, PLACEHOLDER, SG,
                      U, embed, random_name, touch)
from .streams import MAX_FRAME


def build(kind, t, source, marker):
    """The wire of a `kind` case from template `t`: the prefix, then some
    of the window intact, then one bad part in transaction `txn`.
    Returns (wire, expect, reason, detail) (see `cases.Case`)."""
    rng, window = t.rng, t.window
    b = Stream(t.start_tid)
    for txn in t.prefix:
        b.transaction(txn)
    k = rng.randrange(len(window))
    for txn in window[:k]:
        b.transaction(txn)
    txn = window[k]
    last_tid = (window[k - 1].tid if k else
                t.prefix[-1].tid if t.prefix else t.start_tid)
    oid = txn.records[0].oid
    expect, reason, detail = 'reject', None, ''

    def inside(max_records=None):
        """Open `txn` and send some of its records; returns how many."""
        n = len(txn.records)
        count = rng.randint(0, n if max_records is None
                            else min(n, max_records))
        b.begin_txn(txn).records(txn, count)
        return count

    if kind == 'hostile-message':
        hostile = rng.choice(HOSTILES)
        if rng.random() < 0.5:
            inside()
        b.payload(hostile.top(marker), 'M')
        reason, detail = hostile.reason, hostile.name
    elif kind == 'hostile-extension':
        # (Not the BUILD ones: they push an allowed object, which an
        # extension may hold.)
        hostile = rng.choice([h for h in HOSTILES
                              if h.build and h.reason])
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
        shapes = {
            'S-oid': ('S', (PLACEHOLDER, txn.tid, '', None)),
            'S-tid': ('S', (oid, PLACEHOLDER, '', None)),
            'S-data_txn': ('S', (oid, txn.tid, '', PLACEHOLDER)),
            'C': ('C', (PLACEHOLDER,)),
            'kind': (PLACEHOLDER, ()),
            'B-nblocks': ('B', (oid, txn.tid, '', None, PLACEHOLDER)),
            'S-legacy-data': ('S', (oid, txn.tid, '', PLACEHOLDER,
                                    None)),
        }
        b.payload(embed(shapes[field], hostile.build(marker)), 'M')
        reason, detail = hostile.reason, '%s in %s' % (hostile.name, field)
    elif kind == 'random-global':
        if rng.random() < 0.6:
            module, name = rng.choice(DANGEROUS_GLOBALS)
        else:
            module, name = random_name(rng), random_name(rng)
        if rng.random() < 0.5:
            inside()
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
        if kind == 'equal-tid' or last_tid == z64:
            tid = last_tid
        else:
            earlier = [other.tid for other in source.txns
                       if other.tid < last_tid]
            tid = rng.choice(earlier + [z64, p64(u64(last_tid) - 1)])
        b.begin_txn(txn, tid)
        for r in txn.records:   # blobs too: S, not B
            b.store(r.oid, tid, r.data, r.data_txn)
        b.commit()
        reason, detail = 'non-increasing tid', tid.hex()
    elif kind == 'record-tid':
        inside()
        other = rng.choice([last_tid, z64, p64(u64(txn.tid) + 1),
                            rng.randbytes(8)])
        b.store(oid, other, b'record data')
        reason = 'record tid'
    elif kind == 'bad-field':
        phase = rng.choice(['T', 'in'])
        if phase == 'in':
            inside()
            shapes = bad_in_transaction(txn, oid)
        else:
            shapes = bad_begin(txn)
        name, payload, reason = rng.choice(shapes)
        b.payload(payload, 'M')
        detail = name
    elif kind == 'bad-checksum':
        b.transaction(txn, digest=rng.randbytes(16))
        reason = 'checksum mismatch'
    elif kind == 'empty-message':
        if rng.random() < 0.5:
            inside()
        b.payload(b'', 'M')
        reason = 'undecodable'
    elif kind == 'oversized-prefix':
        if rng.random() < 0.3:
            inside()
        length = rng.choice([MAX_FRAME + 1, 0xFFFFFFFF,
                             rng.randint(MAX_FRAME + 1, 0xFFFFFFFF)])
        b.raw(struct.pack('>I', length) + rng.randbytes(
            rng.randint(0, 100)))
        reason = 'too large'
        detail = str(length)
    elif kind == 'big-prefix-close':
        if rng.random() < 0.5:
            inside()
        length = rng.randint(1 << 20, MAX_FRAME)
        b.raw(struct.pack('>I', length) + rng.randbytes(
            rng.randint(0, 1000)))
        expect, detail = 'close', str(length)
    elif kind == 'negative-nblocks':
        inside()
        count = rng.choice([-1, -(10 ** 12), True, 1.5, '3', None])
        b.message('B', (oid, txn.tid, '', None, count))
        reason, detail = 'block count', repr(count)
    elif kind == 'overlong-field':
        size = rng.choice([5000, 100000])
        field = rng.choice(['tid', 'status'])
        if field == 'tid':
            b.message('T', (b'\x01' * size, ' ', b'', b'', {}))
        else:
            b.message('T', (txn.tid, 'x' * size, b'', b'', {}))
        reason, detail = 'bad T message', '%s of %d' % (field, size)
    elif kind == 'overlong-global':
        name = 'x' * rng.choice([5000, 100000])
        b.payload(CALL(G('os', name), U(touch(marker))) + b'.', 'M')
        reason, detail = 'refused global', 'name of %d' % len(name)
    elif kind == 'blob-to-plain':
        b.begin_txn(txn).store_blob(oid, txn.tid, txn.records[0].data
                                    or b'x', [b'blob content'])
        b.commit()
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

    def T(*fields):
        return message('T', fields)

    return [
        ('short tid', T(tid[:7], ' ', b'', b'', {}), 'bad T message'),
        ('str tid', T(tid.hex(), ' ', b'', b'', {}), 'bad T message'),
        ('long status', T(tid, '  ', b'', b'', {}), 'bad T message'),
        ('int status', T(tid, 32, b'', b'', {}), 'bad T message'),
        # Only committed (' ') and packed ('p') transactions are streamed:
        # 'c' (checkpoint) would truncate the file at the next open.
        ('checkpoint status', T(tid, 'c', b'', b'', {}), 'bad T message'),
        ('undone status', T(tid, 'u', b'', b'', {}), 'bad T message'),
        ('bytes status', T(tid, b'x', b'', b'', {}), 'bad T message'),
        ('int user', T(tid, ' ', 5, b'', {}), 'bad T message'),
        ('list extension', T(tid, ' ', b'', b'', []), 'bad T message'),
        ('none extension', T(tid, ' ', b'', b'', None), 'bad T message'),
        ('4 fields', T(tid, ' ', b'', b''), 'bad T message'),
        ('6 fields', T(tid, ' ', b'', b'', {}, 1), 'bad T message'),
        ('unknown type', message('Z', (tid,)), 'unknown type'),
        ('bytes type', message(b'T', (tid, ' ', b'', b'', {})),
         'unknown type'),
        ('list data', pickle.dumps(('T', [tid, ' ', b'', b'', {}]), 1),
         'not a (type, data) pair'),
        ('1-tuple', pickle.dumps(('T',), 1), 'not a (type, data) pair'),
        ('list message', pickle.dumps(['T', ()], 1),
         'not a (type, data) pair'),
        ('int', pickle.dumps(7, 1), 'not a (type, data) pair'),
        ('list type', pickle.dumps(([], ()), 1), None),
        ('dict type', pickle.dumps(({}, ()), 1), None),
        ('not a pickle', b'\xde\xad\xbe\xef garbage', 'undecodable'),
        ('truncated pickle', T(tid, txn.status, txn.user, txn.description,
                               txn.extension)[:-3], 'undecodable'),
        ('deep nesting', b'(' * 50000 + b'.', 'undecodable'),
        ('protocol 5', pickle.dumps(('T', (tid, ' ', b'', b'', {})), 5)
         [:-1] + b'\xff.', 'undecodable'),
    ]


def bad_in_transaction(txn, oid):
    """Malformed messages inside a transaction: (name, payload, reason)."""
    tid = txn.tid

    def S(*fields):
        return message('S', fields)

    return [
        ('short oid', S(oid[:7], tid, '', None), 'bad S message'),
        ('int oid', S(1, tid, '', None), 'bad S message'),
        ('version', S(oid, tid, 'v1', None), 'versions'),
        ('short data_txn', S(oid, tid, '', b'short'), 'bad S message'),
        ('str legacy data', S(oid, tid, '', 'text', None),
         'bad S message'),
        ('3 fields', S(oid, tid, ''), 'bad S message'),
        ('6 fields', S(oid, tid, '', None, None, None), 'bad S message'),
        ('B 4 fields', message('B', (oid, tid, '', None)),
         'bad B message'),
        ('short digest', message('C', (b'short',)), 'bad C message'),
        ('str digest', message('C', ('x' * 16,)), 'bad C message'),
        ('C 2 fields', message('C', (b'\0' * 16, 1)), 'bad C message'),
    ]
