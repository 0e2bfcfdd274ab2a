"""zrsd.protocol: framing, message decoding, checksum.  Messages are built
as a zc.zrs primary builds them: protocol-1 pickles made by Python 3, bytes
as ``_codecs.encode(text, 'latin1')``, ``b''`` as ``builtins.bytes()``."""
import _codecs
import codecs
import copyreg
import datetime
import decimal
import hashlib
import io
import os
import pickle
import struct

import pytest

from zrsd import protocol
from zrsd.protocol import (
    DEFAULT_MAX_FRAME, EMPTY_FRAME, Begin, Commit, FrameDecoder,
    FrameTooLarge, MessageDecoder, ProtocolError, Store, StoreBlob,
    StreamChecksum, encode_frame, encode_message, resolve_globals)

from harness.stream import bytewise, split_everywhere
from harness.stream import message as primary_pickle  # as zc.zrs does

TID = bytes.fromhex('03e5c0a1b2c3d4e5')
OID = bytes.fromhex('0000000000000007')
DATA_TXN = bytes.fromhex('03e5c0a1b2c3d400')
DIGEST = hashlib.md5(b'anything').digest()
WHEN = {'when': datetime.datetime(2024, 5, 17, 12, 30,
                                  tzinfo=datetime.timezone.utc),
        'day': datetime.date(2024, 5, 17),
        'took': datetime.timedelta(seconds=3)}


def decode(payload):
    return MessageDecoder().decode(payload)


def begin_pickle(user=b'', extension=None, protocol=1, tid=TID):
    """A T message pickled by plain `pickle` (objects may be `Call`s)."""
    return pickle.dumps(('T', (tid, ' ', user, b'', extension or {})),
                        protocol)


class Call:
    """Pickles as `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# -- framing ---------------------------------------------------------------

PAYLOADS = [b'zrs2.0', b'', b'\0' * 8, bytes(range(256)) * 3, b'x', b'']
MAX = DEFAULT_MAX_FRAME


def whole(data):
    return [[data]]


def test_encode_frame_is_big_endian_length_then_payload():
    assert encode_frame(b'zrs2.0') == b'\0\0\0\x06zrs2.0'
    assert encode_frame(b'') == EMPTY_FRAME == b'\0\0\0\0'
    framed = encode_frame(b'y' * 70000)
    assert struct.unpack('>I', framed[:4]) == (70000,)
    assert framed[4:] == b'y' * 70000


@pytest.mark.parametrize('payloads, splits, limit', [
    (PAYLOADS, whole, MAX), (PAYLOADS, lambda data: [bytewise(data)], MAX),
    (PAYLOADS, split_everywhere, MAX),
    ([b'ab', b'', b'cde', b''],                 # small, for speed
     lambda data: split_everywhere(data, 3), MAX),
    ([b''], whole, MAX), ([b''] * 3, whole, MAX), ([b'z' * 10], whole, 10),
], ids=['round-trip', 'byte-by-byte', 'split-at-every-byte-boundary',
        'split-at-every-pair-of-boundaries', 'keep-alive', 'keep-alives',
        'at-the-limit'])
def test_frames_decoded(payloads, splits, limit):
    for pieces in splits(b''.join(encode_frame(p) for p in payloads)):
        received = []
        decoder = FrameDecoder(received.append, limit)
        for piece in pieces:
            decoder.feed(piece)
        assert (received, decoder.buffered) == (payloads, 0), pieces


def test_frame_delivered_as_soon_as_complete():
    received = []
    decoder = FrameDecoder(received.append)
    framed = encode_frame(b'hello')
    decoder.feed(framed[:-1])
    assert received == []
    assert decoder.buffered == 4  # the 4 payload bytes so far
    decoder.feed(framed[-1:])
    assert received == [b'hello']


@pytest.mark.parametrize('limit, pieces, length, expected', [
    (10, [struct.pack('>I', 11)], 11, []),   # before the payload arrives
    (MAX, [b'\xff' * 3, b'\xff'], 0xFFFFFFFF, []),  # 4th byte
    (100, [encode_frame(b'ok') + struct.pack('>I', 101) + b'x'], 101,
     [b'ok']),                                # after good frames
], ids=['prefix-alone', 'split-prefix', 'after-good-frames'])
def test_frame_above_limit_refused(limit, pieces, length, expected):
    received = []
    decoder = FrameDecoder(received.append, limit)
    for piece in pieces[:-1]:
        decoder.feed(piece)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(pieces[-1])
    assert isinstance(info.value, ProtocolError)
    assert 'frame of %d bytes' % length in str(info.value)
    assert received == expected


def test_default_limit_is_generous_but_finite():
    assert FrameDecoder([].append).limit == MAX
    assert 1 << 20 <= MAX < 1 << 32


def test_on_frame_exception_propagates_and_frame_is_consumed():
    calls = []

    def on_frame(payload):
        calls.append(payload)
        if payload == b'bad':
            raise RuntimeError('boom')

    decoder = FrameDecoder(on_frame)
    with pytest.raises(RuntimeError):
        decoder.feed(encode_frame(b'bad') + encode_frame(b'next'))
    assert calls == [b'bad']
    decoder.feed(b'')  # the remaining frame is still buffered
    assert calls == [b'bad', b'next']


# -- messages as a zc.zrs primary pickles them ----------------------------

def test_primary_pickles_use_codecs_encode_for_bytes():
    # The premise of the safe unpickler: this is what arrives on the wire.
    assert b'_codecs\nencode\n' in primary_pickle(
        'T', (TID, ' ', b'', b'd', {}))


@pytest.mark.parametrize('kind, data, expected', [
    ('T', (TID, ' ', b'alice', b'add a', {'ticket': 42}),
     Begin(TID, ' ', b'alice', b'add a', {'ticket': 42})),
    ('T', (TID, b'p', 'r\xe9my', '', {}),     # text fields, bytes status
     Begin(TID, 'p', 'r\xe9my'.encode('utf-8'), b'', {})),
    ('T', (TID, 'p', b'', b'', {}), Begin(TID, 'p', b'', b'', {})),
    ('T', (TID, b' ', b'', b'', {}), Begin(TID, ' ', b'', b'', {})),
    ('T', (TID, ' ', b'', b'', WHEN), Begin(TID, ' ', b'', b'', WHEN)),
    ('S', (OID, TID, '', DATA_TXN), Store(OID, TID, DATA_TXN, None, False)),
    ('S', (OID, TID, b'', None), Store(OID, TID, None, None, False)),
    ('S', (OID, TID, '', b'record', None),    # legacy: inline data
     Store(OID, TID, None, b'record', True)),
    ('S', (OID, TID, '', None, DATA_TXN),
     Store(OID, TID, DATA_TXN, None, True)),
    ('B', (OID, TID, '', None, 3), StoreBlob(OID, TID, None, 3)),
    ('B', (OID, TID, '', DATA_TXN, 0), StoreBlob(OID, TID, DATA_TXN, 0)),
    ('C', (DIGEST,), Commit(DIGEST)),
    ('C', (), Commit(None)),                  # legacy: no checksum
])
def test_decode(kind, data, expected):
    message = decode(primary_pickle(kind, data))
    assert (message, type(message)) == (expected, type(expected))


def test_encode_message_decodes_back():
    payload = encode_message('C', (DIGEST,))
    assert payload == primary_pickle('C', (DIGEST,))
    assert decode(payload) == Commit(DIGEST)


# -- hostile and malformed input -------------------------------------------

@pytest.mark.parametrize('wrap', [
    lambda evil: ('T', (TID, ' ', b'', b'', {'x': evil})),
    lambda evil: evil,
], ids=['in-a-message', 'alone'])
def test_hostile_global_refused_and_not_run(tmp_path, wrap):
    marker = tmp_path / 'MARKER'
    payload = pickle.dumps(wrap(Call(os.system, 'touch %s' % marker)), 1)
    with pytest.raises(ProtocolError, match='refused global'):
        decode(payload)
    assert not marker.exists()
    pickle.loads(payload)  # sanity: the payload really is armed
    assert marker.exists()


@pytest.mark.parametrize('args, user', [
    (('abc', 'rot13'), None), (('abc', 'utf-8'), None),
    (('abc',), None),                    # default codec: utf-8
    ((b'abc', 'latin1'), None),          # not text
    (('\xe9t\xe9', 'latin1'), b'\xe9t\xe9'),
    (('\xe9t\xe9', 'latin-1'), b'\xe9t\xe9'),
    (('\xe9t\xe9', 'iso8859-1'), b'\xe9t\xe9'),
])
def test_codecs_encode_only_latin1_text(args, user):
    payload = begin_pickle(Call(_codecs.encode, *args))
    if user is not None:
        assert decode(payload).user == user
    else:
        with pytest.raises(ProtocolError):
            decode(payload)


def test_unknown_global_refused_unless_allowed():
    payload = primary_pickle(
        'T', (TID, ' ', b'', b'', {'amount': decimal.Decimal('1.5')}))
    with pytest.raises(ProtocolError, match='refused global decimal.Decimal'):
        decode(payload)
    allowed = MessageDecoder(resolve_globals(['decimal.Decimal']))
    assert allowed.decode(payload).extension == {
        'amount': decimal.Decimal('1.5')}


def test_resolve_globals_rejects_bad_names():
    allowed = resolve_globals(['datetime.date'])
    assert list(allowed) == [('datetime', 'date')]
    assert allowed[('datetime', 'date')](2024, 6, 1) == datetime.date(
        2024, 6, 1)
    for name in ('nosuchmodule_zrsd.thing', 'datetime.nosuchname', 'nodot'):
        with pytest.raises(ValueError):
            resolve_globals([name])


def test_persistent_ids_refused():
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return 'pid' if obj == 'ref' else None

    f = io.BytesIO()
    P(f, 1).dump(('T', (TID, ' ', b'', b'', {'r': 'ref'})))
    with pytest.raises(ProtocolError):
        decode(f.getvalue())


@pytest.mark.parametrize('payload', [
    b'', b'\xff\xfe\xfd garbage',
    b'(U\x01T', begin_pickle()[:-5],    # truncated pickles
    b'(U\x01T\x82\x01t.',        # EXT opcode, no extension registered
] + [pickle.dumps(message, 1) for message in [
    'T', ('T',), ('T', [TID, ' ', b'', b'', {}]),
    ['T', (TID, ' ', b'', b'', {})], ('X', ()), ('T', (), 'extra'),
]])
def test_undecodable(payload):
    with pytest.raises(ProtocolError, match='undecodable message'):
        decode(payload)


@pytest.mark.parametrize('kind, data', [
    ('T', (TID + b'\0', ' ', b'', b'', {})),         # 9-byte tid
    ('T', (TID[:7], ' ', b'', b'', {})),             # 7-byte tid
    ('T', ('a' * 8, ' ', b'', b'', {})),             # text tid
    ('T', (TID, ' ', b'', b'', [])),                 # extension not a dict
    ('T', (TID, ' ', b'', b'', None)), ('T', (TID, 1, b'', b'', {})),
    ('T', (TID, '  ', b'', b'', {})),                # status not one char
    ('T', (TID, ' ', 7, b'', {})),                   # user not text
    ('T', (TID, ' ', b'', b'')),                     # too few fields
    ('S', (OID, TID, 'v', None)), ('S', (OID, TID, b'v', None)),  # version
    ('S', (OID + b'\0', TID, '', None)),             # 9-byte oid
    ('S', (OID, TID + b'\0', '', None)),             # 9-byte tid
    ('S', (OID, TID, '', b'short')),                 # bad data_txn
    ('S', (OID, TID, '', 'record', None)),           # legacy, text data
    ('S', (OID, TID, 'v', b'record', None)),         # legacy, version
    ('S', (OID, TID, '')),
    ('B', (OID, TID, '', None, -1)),                 # negative nblocks
    ('B', (OID, TID, '', None, '2')), ('B', (OID, TID, '', None, True)),
    ('B', (OID, TID, '', None, 1.0)), ('B', (OID, TID, 'v', None, 1)),
    ('B', (OID, TID, '', None, b'data', 1)),         # B with inline data
    ('C', (DIGEST[:15],)),                           # 15-byte checksum
    ('C', (DIGEST + b'\0',)), ('C', (DIGEST.hex(),)), ('C', (DIGEST, DIGEST)),
])
def test_bad_fields_refused(kind, data):
    with pytest.raises(ProtocolError, match='bad %s message' % kind):
        decode(primary_pickle(kind, data))


@pytest.mark.parametrize('status', ['c', 'u', 'x', b'c'])
def test_status_other_than_committed_or_packed_refused(status):
    with pytest.raises(ProtocolError, match='bad T message: status'):
        decode(primary_pickle('T', (TID, status, b'', b'', {})))


# -- checksum ----------------------------------------------------------------

def test_stream_checksum_is_md5_of_start_tid_and_payloads():
    payloads = [primary_pickle('T', (TID, ' ', b'', b'', {})), b'data', b'',
                primary_pickle('S', (OID, TID, '', None)), b'more']
    checksum = StreamChecksum(TID)
    assert checksum.digest() == hashlib.md5(TID).digest()
    for n, payload in enumerate(payloads, 1):
        checksum.update(payload)
        # digest() does not disturb the running sum
        assert checksum.digest() == hashlib.md5(
            TID + b''.join(payloads[:n])).digest()


def test_stream_checksum_depends_on_start_tid():
    a, b = StreamChecksum(b'\0' * 8), StreamChecksum(TID)
    a.update(b'x')
    b.update(b'x')
    assert a.digest() != b.digest()


def test_build_on_an_allowed_global_cannot_change_it():
    """A BUILD opcode aimed at an allowed global must not modify it."""
    before = protocol._latin1_encode.__defaults__
    attack = (b'c_codecs\nencode\n(N}X\x0c\x00\x00\x00__defaults__'
              b'(X\x05\x00\x00\x00rot13tstb0(X\x01\x00\x00\x00C)t.')
    with pytest.raises(ProtocolError):
        decode(attack)
    assert protocol._latin1_encode.__defaults__ == before


def test_unhashable_type_and_global_as_value_refused():
    with pytest.raises(ProtocolError, match='unknown type'):
        decode(pickle.dumps(([], ()), 1))
    # A global itself is not a value a message may carry.
    payload = begin_pickle(extension={'x': codecs.encode}, tid=b'\1' * 8)
    assert b'c_codecs\nencode' in payload
    with pytest.raises(ProtocolError, match='a global used as a value'):
        decode(payload)


def test_error_text_stays_short():
    for payload in (begin_pickle(tid=b'\x01' * 100000),
                    b'cos' + b'x' * 100000 + b'\nsystem\n.'):
        with pytest.raises(ProtocolError) as info:
            decode(payload)
        assert len(str(info.value)) < 200


# -- bounded decoding ---------------------------------------------------------

def test_empty_bytes_as_python_pickles_them():
    assert pickle.dumps(b'', 1) == b'c__builtin__\nbytes\nq\x00)Rq\x01.'
    message = primary_pickle('T', (TID, ' ', b'', b'', {'empty': b''}))
    assert decode(message).extension == {'empty': b''}


@pytest.mark.parametrize('args', [
    (2 ** 31,), (2 ** 16,),      # 2 GB from a few bytes of pickle
    ('x' * 10, 'utf-16'),        # another codec, through bytes()
    ([65, 66],),
])
def test_bytes_with_arguments_refused(args):
    payload = begin_pickle(Call(bytes, *args), protocol=2)
    assert len(payload) < 200
    with pytest.raises(ProtocolError, match=r'refused bytes\(\) with '):
        decode(payload)


def test_ext_opcode_refused_even_when_copyreg_has_cached_it():
    """The C unpickler serves a cached EXT code without `find_class`: a
    global other code registered and used would reach a message."""
    code = 0x7ff0
    copyreg.add_extension('os', 'getcwd', code)
    try:
        ext = b'\x83' + struct.pack('<H', code)
        cached = b'(U\x01T(C\x08' + TID + b'U\x01 U\x00U\x00}U\x01x' + ext \
            + b'stt.'
        primed = pickle.loads(cached)                        # now cached
        assert primed[1][4]['x'] is os.getcwd
        with pytest.raises(ProtocolError, match='refused EXT2 opcode'):
            decode(cached)
    finally:
        copyreg.remove_extension('os', 'getcwd', code)
        copyreg.clear_extension_cache()
