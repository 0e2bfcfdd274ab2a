"""Unit tests for zrsd.protocol: framing, message decoding, checksum.

Messages are built the way a real zc.zrs primary builds them: protocol-1
pickles of ``(type, data)`` made by Python 3, so bytes travel as
``_codecs.encode(text, 'latin1')`` and ``b''`` as ``builtins.bytes()``.
"""
import _codecs
import copyreg
import datetime
import decimal
import hashlib
import os
import pickle
import struct

import pytest

from zrsd.protocol import (
    DEFAULT_MAX_FRAME, EMPTY_FRAME, Begin, Commit, FrameDecoder,
    FrameTooLarge, MessageDecoder, ProtocolError, Store, StoreBlob,
    StreamChecksum, encode_frame, encode_message, resolve_globals)

# A message exactly as a zc.zrs primary pickles it:
from harness.stream import message as primary_pickle

TID = bytes.fromhex('03e5c0a1b2c3d4e5')
TID2 = bytes.fromhex('03e5c0a1b2c3d4f0')
OID = bytes.fromhex('0000000000000007')
DATA_TXN = bytes.fromhex('03e5c0a1b2c3d400')
DIGEST = hashlib.md5(b'anything').digest()


def decode(payload, decoder=None):
    return (decoder or MessageDecoder()).decode(payload)


# -- framing ---------------------------------------------------------------

PAYLOADS = [b'zrs2.0', b'', b'\0' * 8, bytes(range(256)) * 3, b'x', b'']
STREAM = b''.join(encode_frame(p) for p in PAYLOADS)


def frames_of(pieces, limit=DEFAULT_MAX_FRAME):
    received = []
    decoder = FrameDecoder(received.append, limit)
    for piece in pieces:
        decoder.feed(piece)
    assert decoder.buffered == 0
    return received


def test_encode_frame_is_big_endian_length_then_payload():
    assert encode_frame(b'zrs2.0') == b'\0\0\0\x06zrs2.0'
    assert encode_frame(b'') == EMPTY_FRAME == b'\0\0\0\0'
    payload = b'y' * 70000
    framed = encode_frame(payload)
    assert struct.unpack('>I', framed[:4]) == (70000,)
    assert framed[4:] == payload


def test_encode_frame_round_trip():
    assert frames_of([STREAM]) == PAYLOADS


def test_frames_split_at_every_byte_boundary():
    for cut in range(len(STREAM) + 1):
        assert frames_of([STREAM[:cut], STREAM[cut:]]) == PAYLOADS, cut


def test_frames_split_at_every_pair_of_boundaries():
    # Three pieces: both cuts anywhere (the stream is kept small for speed).
    stream = b''.join(encode_frame(p) for p in [b'ab', b'', b'cde', b''])
    expected = [b'ab', b'', b'cde', b'']
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            assert frames_of([stream[:i], stream[i:j], stream[j:]]) \
                == expected, (i, j)


def test_frames_fed_byte_by_byte():
    pieces = [STREAM[i:i + 1] for i in range(len(STREAM))]
    assert frames_of(pieces) == PAYLOADS


def test_frame_delivered_as_soon_as_complete():
    received = []
    decoder = FrameDecoder(received.append)
    framed = encode_frame(b'hello')
    decoder.feed(framed[:-1])
    assert received == []
    assert decoder.buffered == 4  # the 4 payload bytes so far
    decoder.feed(framed[-1:])
    assert received == [b'hello']


def test_empty_frame_is_a_keep_alive():
    assert frames_of([EMPTY_FRAME]) == [b'']
    assert frames_of([EMPTY_FRAME * 3]) == [b'', b'', b'']


def test_frame_at_the_limit_is_accepted():
    assert frames_of([encode_frame(b'z' * 10)], limit=10) == [b'z' * 10]


def test_frame_above_limit_refused_before_payload_arrives():
    received = []
    decoder = FrameDecoder(received.append, limit=10)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack('>I', 11))  # the length prefix alone
    assert isinstance(info.value, ProtocolError)
    assert '11' in str(info.value)
    assert received == []


def test_huge_length_prefix_split_is_refused_at_the_fourth_byte():
    decoder = FrameDecoder([].append)
    prefix = struct.pack('>I', 0xFFFFFFFF)
    decoder.feed(prefix[:3])  # not yet a length
    with pytest.raises(FrameTooLarge):
        decoder.feed(prefix[3:])


def test_frame_too_large_after_good_frames():
    received = []
    decoder = FrameDecoder(received.append, limit=100)
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_frame(b'ok') + struct.pack('>I', 101) + b'x')
    assert received == [b'ok']


def test_default_limit_is_generous_but_finite():
    assert FrameDecoder([].append).limit == DEFAULT_MAX_FRAME
    assert 1 << 20 <= DEFAULT_MAX_FRAME < 1 << 32


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
    payload = primary_pickle('T', (TID, ' ', b'', b'd', {}))
    assert b'_codecs\nencode\n' in payload


def test_decode_begin():
    message = decode(primary_pickle(
        'T', (TID, ' ', b'alice', b'add a', {'ticket': 42})))
    assert message == Begin(TID, ' ', b'alice', b'add a', {'ticket': 42})
    assert isinstance(message, Begin)


def test_decode_begin_text_fields_and_bytes_status():
    message = decode(primary_pickle('T', (TID, b'p', 'r\xe9my', '', {})))
    assert message.status == 'p'
    assert message.user == 'r\xe9my'.encode('utf-8')
    assert message.description == b''


def test_decode_begin_extension_with_datetime():
    when = datetime.datetime(2024, 5, 17, 12, 30, tzinfo=datetime.timezone.utc)
    extension = {'when': when, 'day': datetime.date(2024, 5, 17),
                 'took': datetime.timedelta(seconds=3)}
    message = decode(primary_pickle('T', (TID, ' ', b'', b'', extension)))
    assert message.extension == extension


def test_decode_store():
    message = decode(primary_pickle('S', (OID, TID, '', DATA_TXN)))
    assert message == Store(OID, TID, DATA_TXN, None, False)
    message = decode(primary_pickle('S', (OID, TID, b'', None)))
    assert message == Store(OID, TID, None, None, False)


def test_decode_legacy_store_with_inline_data():
    message = decode(primary_pickle('S', (OID, TID, '', b'record', None)))
    assert message == Store(OID, TID, None, b'record', True)
    message = decode(primary_pickle('S', (OID, TID, '', None, DATA_TXN)))
    assert message == Store(OID, TID, DATA_TXN, None, True)


def test_decode_store_blob():
    message = decode(primary_pickle('B', (OID, TID, '', None, 3)))
    assert message == StoreBlob(OID, TID, None, 3)
    assert decode(primary_pickle('B', (OID, TID, '', DATA_TXN, 0))) \
        == StoreBlob(OID, TID, DATA_TXN, 0)


def test_decode_commit():
    assert decode(primary_pickle('C', (DIGEST,))) == Commit(DIGEST)


def test_decode_legacy_commit_without_checksum():
    assert decode(primary_pickle('C', ())) == Commit(None)


def test_encode_message_decodes_back():
    payload = encode_message('C', (DIGEST,))
    assert payload == primary_pickle('C', (DIGEST,))
    assert decode(payload) == Commit(DIGEST)


# -- hostile and malformed input -------------------------------------------

class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, ('touch %s' % self.marker,))


def test_hostile_global_refused_and_not_run(tmp_path):
    marker = tmp_path / 'MARKER'
    payload = pickle.dumps(('T', (TID, ' ', b'', b'', {'x': Evil(marker)})), 1)
    with pytest.raises(ProtocolError, match='refused global'):
        decode(payload)
    assert not marker.exists()
    # Sanity: the payload really is armed.
    pickle.loads(payload)
    assert marker.exists()


def test_hostile_global_alone_refused(tmp_path):
    marker = tmp_path / 'MARKER'
    with pytest.raises(ProtocolError, match='refused global'):
        decode(pickle.dumps(Evil(marker), 1))
    assert not marker.exists()


class CodecCall:
    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (_codecs.encode, self.args)


@pytest.mark.parametrize('args', [
    ('abc', 'rot13'),
    ('abc', 'utf-8'),
    ('abc',),                    # default codec: utf-8
    (b'abc', 'latin1'),          # not text
])
def test_codecs_encode_only_latin1_text(args):
    payload = pickle.dumps(('T', (TID, ' ', CodecCall(*args), b'', {})), 1)
    with pytest.raises(ProtocolError):
        decode(payload)


def test_codecs_encode_latin1_spellings_accepted():
    for codec in ('latin1', 'latin-1', 'iso8859-1'):
        payload = pickle.dumps(
            ('T', (TID, ' ', CodecCall('\xe9t\xe9', codec), b'', {})), 1)
        assert decode(payload).user == b'\xe9t\xe9'


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
    with pytest.raises(ValueError):
        resolve_globals(['nosuchmodule_zrsd.thing'])
    with pytest.raises(ValueError):
        resolve_globals(['datetime.nosuchname'])
    with pytest.raises(ValueError):
        resolve_globals(['nodot'])


def test_persistent_ids_refused():
    import io

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return 'pid' if obj == 'ref' else None

    f = io.BytesIO()
    P(f, 1).dump(('T', (TID, ' ', b'', b'', {'r': 'ref'})))
    with pytest.raises(ProtocolError):
        decode(f.getvalue())


@pytest.mark.parametrize('payload', [
    b'',
    b'\xff\xfe\xfd garbage',
    b'(U\x01T',               # truncated pickle
    pickle.dumps(('T', (TID, ' ', b'', b'', {})), 1)[:-5],
])
def test_garbage_is_undecodable(payload):
    with pytest.raises(ProtocolError, match='undecodable message'):
        decode(payload)


@pytest.mark.parametrize('message', [
    'T',
    ('T',),
    ('T', [TID, ' ', b'', b'', {}]),
    ['T', (TID, ' ', b'', b'', {})],
    ('X', ()),
    ('T', (), 'extra'),
])
def test_not_a_message_is_undecodable(message):
    with pytest.raises(ProtocolError, match='undecodable message'):
        decode(pickle.dumps(message, 1))


@pytest.mark.parametrize('kind, data', [
    ('T', (TID + b'\0', ' ', b'', b'', {})),         # 9-byte tid
    ('T', (TID[:7], ' ', b'', b'', {})),             # 7-byte tid
    ('T', ('a' * 8, ' ', b'', b'', {})),             # text tid
    ('T', (TID, ' ', b'', b'', [])),                 # extension not a dict
    ('T', (TID, ' ', b'', b'', None)),
    ('T', (TID, '  ', b'', b'', {})),                # status not one char
    ('T', (TID, 1, b'', b'', {})),
    ('T', (TID, ' ', 7, b'', {})),                   # user not text
    ('T', (TID, ' ', b'', b'')),                     # too few fields
    ('S', (OID, TID, 'v', None)),                    # version
    ('S', (OID, TID, b'v', None)),
    ('S', (OID + b'\0', TID, '', None)),             # 9-byte oid
    ('S', (OID, TID + b'\0', '', None)),             # 9-byte tid
    ('S', (OID, TID, '', b'short')),                 # bad data_txn
    ('S', (OID, TID, '', 'record', None)),           # legacy, text data
    ('S', (OID, TID, 'v', b'record', None)),         # legacy, version
    ('S', (OID, TID, '')),
    ('B', (OID, TID, '', None, -1)),                 # negative nblocks
    ('B', (OID, TID, '', None, '2')),
    ('B', (OID, TID, '', None, True)),
    ('B', (OID, TID, '', None, 1.0)),
    ('B', (OID, TID, 'v', None, 1)),
    ('B', (OID, TID, '', None, b'data', 1)),         # B with inline data
    ('C', (DIGEST[:15],)),                           # 15-byte checksum
    ('C', (DIGEST + b'\0',)),
    ('C', (DIGEST.hex(),)),
    ('C', (DIGEST, DIGEST)),
])
def test_bad_fields_refused(kind, data):
    with pytest.raises(ProtocolError, match='bad %s message' % kind):
        decode(primary_pickle(kind, data))


# -- checksum ----------------------------------------------------------------

def test_stream_checksum_is_md5_of_start_tid_and_payloads():
    payloads = [primary_pickle('T', (TID, ' ', b'', b'', {})), b'data', b'',
                primary_pickle('S', (OID, TID2, '', None))]
    checksum = StreamChecksum(TID)
    expected = hashlib.md5(TID)
    assert checksum.digest() == expected.digest()
    for payload in payloads:
        checksum.update(payload)
    assert checksum.digest() == hashlib.md5(
        TID + b''.join(payloads)).digest()
    # digest() does not disturb the running sum
    checksum.update(b'more')
    assert checksum.digest() == hashlib.md5(
        TID + b''.join(payloads) + b'more').digest()


def test_stream_checksum_depends_on_start_tid():
    a, b = StreamChecksum(b'\0' * 8), StreamChecksum(TID)
    a.update(b'x')
    b.update(b'x')
    assert a.digest() != b.digest()


def test_build_on_an_allowed_global_cannot_change_it():
    """A BUILD opcode aimed at an allowed global must not modify it."""
    from zrsd import protocol
    before = protocol._latin1_encode.__defaults__
    attack = (b'c_codecs\nencode\n(N}X\x0c\x00\x00\x00__defaults__'
              b'(X\x05\x00\x00\x00rot13tstb0(X\x01\x00\x00\x00C)t.')
    with pytest.raises(ProtocolError):
        MessageDecoder().decode(attack)
    assert protocol._latin1_encode.__defaults__ == before


def test_unhashable_type_and_global_as_value_refused():
    with pytest.raises(ProtocolError, match='unknown type'):
        MessageDecoder().decode(pickle.dumps(([], ()), 1))
    # A global itself is not a value a message may carry.
    import codecs
    payload = pickle.dumps(
        ('T', (b'\1' * 8, ' ', b'', b'', {'x': codecs.encode})), 1)
    assert b'c_codecs\nencode' in payload
    with pytest.raises(ProtocolError, match='a global used as a value'):
        MessageDecoder().decode(payload)


def test_error_text_stays_short():
    with pytest.raises(ProtocolError) as info:
        MessageDecoder().decode(pickle.dumps(
            ('T', (b'\x01' * 100000, ' ', b'', b'', {})), 1))
    assert len(str(info.value)) < 200
    with pytest.raises(ProtocolError) as info:
        MessageDecoder().decode(b'cos' + b'x' * 100000 + b'\nsystem\n.')
    assert len(str(info.value)) < 200


# -- bounded decoding ---------------------------------------------------------

class BytesCall:
    """Pickles as builtins.bytes(*args)."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return (bytes, self.args)


def test_empty_bytes_as_python_pickles_them():
    assert pickle.dumps(b'', 1) == b'c__builtin__\nbytes\nq\x00)Rq\x01.'
    extension = {'empty': b''}
    assert decode(primary_pickle('T', (TID, ' ', b'', b'', extension))
                  ).extension == extension


@pytest.mark.parametrize('args', [
    (2 ** 31,),                  # 2 GB from a few bytes of pickle
    (2 ** 16,),
    ('x' * 10, 'utf-16'),        # another codec, through bytes()
    ([65, 66],),
])
def test_bytes_with_arguments_refused(args):
    payload = pickle.dumps(('T', (TID, ' ', BytesCall(*args), b'', {})), 2)
    assert len(payload) < 200
    with pytest.raises(ProtocolError, match=r'refused bytes\(\) with '):
        decode(payload)


@pytest.mark.parametrize('status', ['c', 'u', 'x', b'c'])
def test_status_other_than_committed_or_packed_refused(status):
    with pytest.raises(ProtocolError, match='bad T message: status'):
        decode(primary_pickle('T', (TID, status, b'', b'', {})))


def test_committed_and_packed_statuses_accepted():
    for status in (' ', 'p', b' ', b'p'):
        assert decode(primary_pickle('T', (TID, status, b'', b'', {}))
                      ).status in (' ', 'p')


def test_ext_opcode_refused_even_when_copyreg_has_cached_it():
    """The C unpickler serves an EXT code from copyreg's cache without
    asking `find_class`: a global that some other code registered and
    used would reach a message."""
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


def test_ext_opcode_without_any_registered_extension_is_undecodable():
    with pytest.raises(ProtocolError, match='undecodable'):
        decode(b'(U\x01T\x82\x01t.')
