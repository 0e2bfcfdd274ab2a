"""The ZRS wire protocol: framing, messages, checksum, safe unpickling.

This module is pure: it knows nothing of Twisted, ZEO or storages.

Frames
    Every message in both directions is a frame: a 4-byte big-endian unsigned
    length followed by that many bytes of payload.  A length of 0 is an empty
    message.  Receivers enforce a size limit on the claimed length before
    buffering anything.

Handshake (secondary -> primary, no reply)
    1. a frame holding the protocol name: ``b'zrs2.0'``, or ``b'zrs2.1'``
       when the secondary's storage has blobs;
    2. a frame holding the 8-byte id of the last transaction the secondary
       has (eight zero bytes: start from the beginning).
    Afterwards the secondary sends only empty frames, as keep-alives.

Messages (primary -> secondary)
    Each message frame is a pickle (protocol 1) of ``(type, data)``:

    ``('T', (tid, status, user, description, extension))``
        begins a transaction; ``status`` is ``' '`` or ``'p'`` (packed);
        ``extension`` is a dict (a zrsd primary writes it as the pickle
        opcodes its file holds, often protocol 3: see `encode_begin`).
    ``('S', (oid, tid, version, data_txn))``
        stores one record; the *next* frame is the raw record data (an empty
        frame means ``None``: the undo of an object's creation).
    ``('B', (oid, tid, version, data_txn, nblocks))``
        stores a blob record: the next frame is the record data, then
        ``nblocks`` raw frames of at most 65536 bytes of blob file content.
    ``('C', (digest,))``
        commits the transaction.

    Legacy forms, still accepted: ``('S', (oid, tid, version, data,
    data_txn))`` with the record data inline and no raw frame after it, and
    ``('C', ())`` without a checksum.

Checksum
    md5, seeded with the start tid the secondary sent, updated with every
    payload the primary sends (not the length prefixes), in order, for the
    whole connection.  The digest in a ``C`` message covers every payload
    before that ``C`` frame.

Unpickling
    The primary is a network peer, so message pickles go through
    `SafeUnpickler`: it resolves only the globals that Python 3 needs to
    rebuild protocol-1 pickles of bytes (``_codecs.encode`` with latin-1 and
    ``builtins.bytes`` with no argument), the ``datetime`` types, and
    whatever the operator allows explicitly.  Every other global, and the
    EXT opcodes (copyreg extensions), are refused with `ProtocolError`.
"""
import codecs
import collections
import copyreg
import hashlib
import io
import pickle
import pickletools
import struct

PROTOCOL_2_0 = b'zrs2.0'
PROTOCOL_2_1 = b'zrs2.1'
PROTOCOLS = (PROTOCOL_2_0, PROTOCOL_2_1)

#: The default limit on one frame's payload.  A single ZODB record bigger
#: than this is refused; it is configurable (``max-message-size``).
DEFAULT_MAX_FRAME = 256 << 20

#: Size of the blob content blocks a primary sends.
BLOB_BLOCK_SIZE = 1 << 16

_LENGTH = struct.Struct('>I')
EMPTY_FRAME = _LENGTH.pack(0)


class ProtocolError(Exception):
    """The peer broke the protocol; the connection must be dropped."""


def _cut(text, limit=60):
    return text if len(text) <= limit else text[:limit] + '...'


def brief(value, limit=40):
    """repr() of a peer's value, cut short: error lines stay one line."""
    text = repr(value)
    if len(text) > limit:
        text = '%s...(%d chars)' % (text[:limit], len(text))
    return text


class ChecksumMismatch(ProtocolError):
    """A commit's checksum does not match the stream received."""


class FrameTooLarge(ProtocolError):
    """A frame claimed a length above the configured limit."""


def encode_frame(payload):
    """Return `payload` with its 4-byte length prefix."""
    return _LENGTH.pack(len(payload)) + payload


def frame_length(payload):
    """The 4-byte length prefix of `payload` (to send before it, uncopied)."""
    return _LENGTH.pack(len(payload))


class FrameDecoder:
    """Split a byte stream into frames, calling `on_frame(payload)` for each.

    Feed it whatever arrives, in pieces of any size.  A claimed length above
    `limit` raises `FrameTooLarge` before any of that frame is buffered.  If
    `on_frame` raises, the frame has already been consumed and the exception
    propagates to the caller of `feed`.
    """

    def __init__(self, on_frame, limit=DEFAULT_MAX_FRAME):
        self._on_frame = on_frame
        self.limit = limit
        self._buffer = bytearray()
        self._expected = None  # payload length of the frame being read

    @property
    def buffered(self):
        """How many bytes are waiting for a complete frame."""
        return len(self._buffer)

    def feed(self, data):
        # Frames are cut from a moving offset; the consumed bytes are
        # dropped once per call (not once per frame: a big read holding
        # many frames would be moved again for each).
        buffer = self._buffer
        buffer += data
        pos = 0
        try:
            while True:
                if self._expected is None:
                    if len(buffer) - pos < 4:
                        return
                    (length,) = _LENGTH.unpack_from(buffer, pos)
                    if length > self.limit:
                        raise FrameTooLarge(
                            'frame of %d bytes is too large (limit %d)'
                            % (length, self.limit))
                    pos += 4
                    self._expected = length
                length = self._expected
                if len(buffer) - pos < length:
                    return
                payload = bytes(memoryview(buffer)[pos:pos + length])
                pos += length
                self._expected = None
                self._on_frame(payload)
        finally:
            del buffer[:pos]


class StreamChecksum:
    """The running md5 of a replication stream (see module docstring)."""

    def __init__(self, start_tid):
        self._md5 = hashlib.md5(start_tid)

    def update(self, payload):
        self._md5.update(payload)

    def digest(self):
        return self._md5.digest()


# Decoded messages.  `data` is None in `Store` when the record data follows
# in its own frame (the current form), bytes or None when it came inline.
Begin = collections.namedtuple(
    'Begin', 'tid status user description extension')
Store = collections.namedtuple('Store', 'oid tid data_txn data inline')
StoreBlob = collections.namedtuple('StoreBlob', 'oid tid data_txn nblocks')
Commit = collections.namedtuple('Commit', 'checksum')


# The names Python's pickler writes, checked first (codecs.lookup is slow).
_LATIN1 = frozenset(('latin1', 'latin-1', 'iso8859-1', 'iso-8859-1'))


def _latin1_encode(text, encoding='utf-8'):
    # Python 3 writes protocol-1 pickles of bytes as
    # _codecs.encode(latin1_text, 'latin1'); accept nothing else, so a
    # hostile pickle cannot reach other codecs through this door.
    if type(text) is str and (encoding in _LATIN1 or (
            isinstance(encoding, str)
            and codecs.lookup(encoding).name == 'iso8859-1')):
        return text.encode('latin-1')
    raise ProtocolError('refused _codecs.encode(%s, %s)' % (
        type(text).__name__, brief(encoding)))


class Constructor:
    """What the unpickler hands out for an allowed global: callable, and
    immutable.

    A pickle can do more with a global than call it: a BUILD opcode sets
    attributes on it (e.g. a function's `__defaults__`, or a class's
    methods), which would change it for the whole process.  An instance of
    a `Constructor` subclass (see `constructor`) has no attributes to set;
    and it is not a value a message may keep (see `_check_values`).
    """

    __slots__ = ()

    def __reduce__(self):
        raise TypeError('a Constructor is not a value')


def constructor(function):
    """An immutable callable standing for `function` (one class each, so
    that calling it costs no extra Python frame)."""
    cls = type('Constructor(%s)' % getattr(function, '__qualname__', '?'),
               (Constructor,),
               {'__slots__': (), '__call__': staticmethod(function)})
    return cls()


def _empty_bytes(*args):
    # Python 3 writes an empty bytes object as bytes() called with nothing.
    # With arguments, bytes() would build far more than the message holds
    # (bytes(2**31)) or reach other codecs (bytes(text, codec)).
    if args:
        raise ProtocolError('refused bytes() with arguments (%s)' % ', '.join(
            type(arg).__name__ for arg in args[:3]))
    return b''


_BUILTIN_GLOBALS = {
    ('_codecs', 'encode'): constructor(_latin1_encode),
    ('builtins', 'bytes'): constructor(_empty_bytes),
    ('__builtin__', 'bytes'): constructor(_empty_bytes),
}

#: Transaction statuses a primary may send: committed, or packed.
#: ('c', checkpoint, would truncate the file at the next open; 'u' is an
#: old-style undo a primary does not stream.)
VALID_STATUSES = (' ', 'p')

# The EXT1/EXT2/EXT4 opcodes name globals through copyreg's extension
# registry; the C unpickler serves a cached one without `find_class`.
_EXT_OPCODES = frozenset(b'\x82\x83\x84')

#: Globals that transaction extensions commonly hold and that are safe to
#: rebuild; allowed unless the operator says otherwise.
DEFAULT_ALLOWED_GLOBALS = (
    'datetime.datetime', 'datetime.date', 'datetime.time',
    'datetime.timedelta', 'datetime.timezone',
)


def resolve_globals(names):
    """Map dotted names (``'module.name'``) to objects for `SafeUnpickler`.

    Raises ValueError for a name that does not import.
    """
    import importlib
    allowed = {}
    for dotted in names:
        module_name, _, attr = dotted.rpartition('.')
        if not module_name:
            raise ValueError('%r is not a dotted module.name' % dotted)
        try:
            allowed[(module_name, attr)] = constructor(getattr(
                importlib.import_module(module_name), attr))
        except (ImportError, AttributeError) as exc:
            raise ValueError('cannot import %s: %s' % (dotted, exc))
    return allowed


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only an explicit set of globals."""

    def __init__(self, file, allowed):
        super().__init__(file)
        self._allowed = allowed

    def find_class(self, module, name):
        key = (module, name)
        if key in _BUILTIN_GLOBALS:
            return _BUILTIN_GLOBALS[key]
        if key in self._allowed:
            return self._allowed[key]
        raise ProtocolError('refused global %s.%s in message' % (
            _cut(module), _cut(name)))

    def persistent_load(self, pid):
        raise ProtocolError('refused persistent id in message')


class MessageDecoder:
    """Turn message payloads into `Begin`/`Store`/`StoreBlob`/`Commit`.

    Validates every field's type and size, so the state machine and the
    storage only ever see well-formed values.
    """

    def __init__(self, allowed_globals=None):
        if allowed_globals is None:
            allowed_globals = resolve_globals(DEFAULT_ALLOWED_GLOBALS)
        self._allowed = allowed_globals

    def decode(self, payload):
        _refuse_extension_opcodes(payload)
        try:
            message = SafeUnpickler(io.BytesIO(payload), self._allowed).load()
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError('undecodable message (%s: %s)' % (
                type(exc).__name__, exc))
        if not (isinstance(message, tuple) and len(message) == 2
                and isinstance(message[1], tuple)):
            raise ProtocolError('undecodable message: not a (type, data) pair')
        kind, data = message
        decode = self._decoders.get(kind) if isinstance(kind, str) else None
        if decode is None:
            raise ProtocolError(
                'undecodable message: unknown type %s' % brief(kind))
        return decode(data)

    @staticmethod
    def _begin(data):
        _arity('T', data, 5)
        tid, status, user, description, extension = data
        _check_id('T', 'tid', tid)
        if isinstance(status, bytes):
            status = status.decode('latin-1')
        if status not in VALID_STATUSES:
            raise ProtocolError('bad T message: status %s' % brief(status))
        user = _text_bytes('T', 'user', user)
        description = _text_bytes('T', 'description', description)
        if not isinstance(extension, dict):
            raise ProtocolError('bad T message: extension is %s, not dict'
                                % type(extension).__name__)
        _check_values('T', extension)
        return Begin(tid, status, user, description, extension)

    @staticmethod
    def _store(data):
        if len(data) == 5:  # legacy: data inline
            oid, tid, version, record, data_txn = data
            if record is not None and not isinstance(record, bytes):
                raise ProtocolError('bad S message: data is %s'
                                    % type(record).__name__)
            inline = True
        else:
            _arity('S', data, 4)
            oid, tid, version, data_txn = data
            record, inline = None, False
        _check_record('S', oid, tid, version, data_txn)
        return Store(oid, tid, data_txn, record or None, inline)

    @staticmethod
    def _store_blob(data):
        _arity('B', data, 5)
        oid, tid, version, data_txn, nblocks = data
        _check_record('B', oid, tid, version, data_txn)
        if not isinstance(nblocks, int) or isinstance(nblocks, bool) \
                or nblocks < 0:
            raise ProtocolError('bad B message: block count %s'
                                % brief(nblocks))
        return StoreBlob(oid, tid, data_txn, nblocks)

    @staticmethod
    def _commit(data):
        if data == ():
            return Commit(None)
        _arity('C', data, 1)
        (checksum,) = data
        if not (isinstance(checksum, bytes) and len(checksum) == 16):
            raise ProtocolError('bad C message: checksum %s'
                                % brief(checksum))
        return Commit(checksum)

    _decoders = {
        'T': _begin.__func__,
        'S': _store.__func__,
        'B': _store_blob.__func__,
        'C': _commit.__func__,
    }


def _refuse_extension_opcodes(payload):
    """No EXT1/EXT2/EXT4 opcode in `payload` (see `_EXT_OPCODES`).

    While nothing in the process registered a copyreg extension (zrsd does
    not), an EXT opcode cannot name anything: the unpickler refuses it.
    Otherwise the opcodes are walked, when one of their bytes occurs.
    """
    if not (copyreg._inverted_registry or copyreg._extension_cache):
        return
    if not any(code in payload for code in _EXT_OPCODES):
        return
    try:
        for opcode, _, _ in pickletools.genops(payload):
            if ord(opcode.code) in _EXT_OPCODES:
                raise ProtocolError('refused %s opcode (copyreg extension) '
                                    'in message' % opcode.name)
            if opcode.name == 'STOP':
                return
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError('undecodable message (%s: %s)' % (
            type(exc).__name__, exc))


def _arity(kind, data, n):
    if len(data) != n:
        raise ProtocolError('bad %s message: %d fields, expected %d'
                            % (kind, len(data), n))


def _check_values(kind, value, depth=0):
    """No global itself (a `Constructor`) among a message's values.

    Whatever the allowed globals built is fine; the globals are not values.
    """
    if depth > 100:
        raise ProtocolError('bad %s message: values nested too deep' % kind)
    if isinstance(value, Constructor):
        raise ProtocolError('bad %s message: a global used as a value' % kind)
    if isinstance(value, dict):
        children = [item for pair in value.items() for item in pair]
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = value
    else:
        return
    for child in children:
        _check_values(kind, child, depth + 1)


def _check_id(kind, field, value):
    if not (isinstance(value, bytes) and len(value) == 8):
        raise ProtocolError('bad %s message: %s %s is not 8 bytes'
                            % (kind, field, brief(value)))


def _check_record(kind, oid, tid, version, data_txn):
    _check_id(kind, 'oid', oid)
    _check_id(kind, 'tid', tid)
    if version not in ('', b''):
        raise ProtocolError('bad %s message: versions are not supported '
                            '(%s)' % (kind, brief(version)))
    if data_txn is not None:
        _check_id(kind, 'data_txn', data_txn)


def _text_bytes(kind, field, value):
    if isinstance(value, str):
        return value.encode('utf-8')
    if isinstance(value, bytes):
        return value
    raise ProtocolError('bad %s message: %s is %s'
                        % (kind, field, type(value).__name__))


def encode_message(kind, data):
    """Pickle a message the way a zc.zrs primary does (protocol 1)."""
    return pickle.dumps((kind, data), 1)


_EXTENSION_PLACEHOLDER = 'zrsd: the extension pickle goes here'


def encode_begin(tid, status, user, description, extension_bytes):
    """The `T` message of a transaction whose extension is the pickle
    `extension_bytes` (as FileStorage holds it).

    The primary never unpickles an extension: it could name any global,
    importable or not where zrsd runs.  The extension's pickle opcodes are
    put, as they are, where the dict goes in the message; the receiver
    unpickles the whole message (a zrsd replica with its restricted
    unpickler).  This is sound because the message's own opcodes after the
    extension only close tuples: the extension's memo entries (it numbers
    them from 0 too) are never read by them.  An extension pickle this
    cannot splice (protocol 4 framing) is rebuilt through the restricted
    unpickler with the default allowed globals instead.
    """
    if not extension_bytes:
        return encode_message('T', (tid, status, user, description, {}))
    body = _pickle_body(extension_bytes)
    if body is None:
        extension = SafeUnpickler(
            io.BytesIO(extension_bytes),
            resolve_globals(DEFAULT_ALLOWED_GLOBALS)).load()
        return encode_message('T', (tid, status, user, description,
                                    extension))
    message = encode_message('T', (tid, status, user, description,
                                   _EXTENSION_PLACEHOLDER))
    text = _EXTENSION_PLACEHOLDER.encode('utf-8')
    placeholder = b'X' + struct.pack('<I', len(text)) + text
    head, found, tail = message.partition(placeholder)
    assert found and placeholder not in tail
    return head + body + tail


def _pickle_body(data):
    """The opcodes of pickle `data` that push its object (no PROTO, no
    STOP), or None when it uses framing (protocol 4 and later)."""
    if data[:1] == b'\x80':
        if len(data) < 2 or data[1] >= 4:
            return None
        data = data[2:]
    if data[-1:] != b'.':
        raise ProtocolError('transaction extension is not a whole pickle')
    return data[:-1]
