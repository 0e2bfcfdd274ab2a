#!/usr/bin/env python3
"""Fuzz zrsd's replication protocol, both directions, against real processes.

    .venv/bin/python scripts/fuzz.py --cases 1000 --seed 1 --in-process
    .venv/bin/python scripts/fuzz.py --cases 50 --side primary -v
    .venv/bin/python scripts/fuzz.py --cases 0 --side none --in-process \\
        --in-process-cases 50000

Prints a summary and exits 1 if any invariant was violated (0 when clean).
Everything is deterministic given ``--seed``: the source histories are
built with a fake clock, so their tids and bytes are the same on every run,
and every case is drawn from a `random.Random` seeded with
``(seed, lane, case number)``.

Secondary side (zrsd replicas fed by a fake primary)
----------------------------------------------------
Two *lanes* run side by side, each one long-lived ``zrsd`` replica process
(``reconnect-delay 0.1``, ``serve-empty``, no keep-alives) and a *case
server*: a fake primary that serves exactly one case per connection.  The
``plain`` lane's replica has no blob-dir (it speaks zrs2.0); the ``blobs``
lane's has one (zrs2.1).  Each lane replicates a small real FileStorage,
the *source*, built once: cycles of creations, changes, a big record, undos
(records with a back pointer, and undone creations, i.e. ``None`` data),
transaction metadata with ``datetime`` extensions, and in the blob lane blob
files of 0 to 140000 bytes (0 to 3 blocks).

Keeping cases independent: a replica's whole state is its last tid, and it
names it in every handshake.  Case *k* of a lane is generated from
``(seed, lane, k)`` and the source index *i* of that start tid: it replays
0-2 valid transactions after the start tid (the *prefix*: so cases start
from every point of the history, and resuming after a rejection is
exercised every time), then a *window* of the 1-3 following source
transactions that is broken in one way:

- byte mutations of the window's wire bytes: bit flips, inserted, deleted
  or overwritten bytes, spliced copies, rewritten length prefixes,
  truncation at a random byte (then close);
- frame mutations with the original checksums (what a wire could do to a
  good stream): duplicated, dropped (C, T, anything), swapped and moved
  frames; legacy (checksum-less) streams get only the structural ones;
- synthetic bad parts with *correct* checksums, so only the check under
  test can stop them: hostile pickles (``os.system``, ``posix.system``,
  ``subprocess.Popen``, ``builtins.eval``/``exec``/``open``,
  ``getattr(__import__('os'), 'system')``, ``copyreg._reconstructor``,
  OBJ/INST/STACK_GLOBAL/PERSID/EXT opcodes, ``__reduce__`` objects pickled
  by the real pickler, BUILD on an allowed global, ``bytes(2**40)``...) as
  a whole message or inside a T extension, an S field or a C digest;
  arbitrary global names; malformed fields; a T whose tid is not above the
  last; a record tid that is not the transaction's; a wrong digest; empty
  messages; oversized and big-but-allowed length prefixes; a B message to
  the replica without blob-dir; ``nblocks = 10**12`` followed by a few blocks
  then close; negative block counts; overlong fields and global names.

Every case ends with the case server closing its side (``shutdown``), then
waiting for zrsd to drop the connection; the replica reconnects, and the
next handshake is both the sync point and the first observation.

The oracle is exact.  The case server also builds the *valid* wire of prefix
plus window (correct checksums).  If ``d`` is the length of the common
prefix of the valid wire and the case's wire, a correct replica commits
exactly the transactions whose C frame ends within ``d``: everything after
``d`` either breaks the structure or the md5 (which covers every payload
before each C).  So after case *k* the replica must hand-shake with the
source tid at index ``i + commits``: less is a lost valid transaction,
more (or a tid that is not in the source) an unchecked one.

When a replica gets near the end of its source, the lane ends an *epoch*:
SIGTERM (exit status 0 expected), the replica's file is compared with the
source, blob files included, and a fresh replica (new files, new ports)
starts.

Checked after every case: the process is alive; a fresh read-only ZEO
client (``ZEO.client(addr, read_only=True)``) answers, its
``lastTransaction()`` is the handshake's tid and ``loadSerial`` serves
every record committed since the last check; those transactions, read
from the replica's file, equal the source's (tid, status, user,
description, extension, and every record's oid, tid, data and data_txn).
(Not read with ZEO's ``iterator()``: a ZEO 6 client refuses the
``datetime`` in the source's extensions and then waits for ever.  The
file is quiet meanwhile: the replica waits for our first frame.)  No
marker file exists (every hostile pickle tries to create one); no
temporary blob file is left behind; and the
replica's log for that connection ends in exactly one line: one ERROR
(``replication stream rejected: ...`` or ``applying transaction ...
failed: ...``) or one INFO ``disconnected``.  (zrsd rate-limits repeats of
an identical apply failure to DEBUG; the replicas log at DEBUG, and such a
line counts if the same text was an ERROR before.)  Truncations must not log an
ERROR; must-reject cases must log one naming the expected reason; an ERROR
line must be short (``MAX_ERROR_LINE``) and its traceback, if any, must not
come from ``zrsd/protocol.py`` (the decoder must turn bad input into
``ProtocolError``).  Other ERROR/CRITICAL lines, and WARNINGs other than
the expected ones, are violations too.

Primary side (a zrsd primary with a real zrsd replica attached)
--------------------------------------------------------------
Hostile secondaries in batches: random bytes, random frames, a valid
protocol name and a random tid (refused if above the primary's last tid,
streamed otherwise: the whole stream up to the last commit is read, and
each transaction must be the next one of the primary's file, records and
metadata equal, with a correct checksum), valid handshakes
followed by random non-empty or oversized frames, keep-alives then a
partial frame, half-closes, resets in the middle of a stream, storms of
5-40 concurrent connections opened and dropped (FIN or RST, with nothing,
a partial or a full handshake), and slow-loris connections (nothing, or
part of a handshake; one per batch dribbles a 64-byte frame a byte per
case) that the handshake timeout must drop; they are judged a few batches
later, so that nobody waits for the timeout.  The
expected outcome of each connection comes from a model of the primary's
handshake rules (`expect_from_primary`): refused with a given reason (the
primary must close the connection and log exactly one ERROR naming it) or
not (zero ERROR lines, or one for the handshake timeout if we closed
mid-handshake: our close may arrive after it; the connection ends with
``disconnected``).  Log
lines are matched to connections by the client port, which the primary
logs.  After each batch the primary must be alive, a new commit must
reach the legit replica, and the replica must still be on its first
connection.  At the end both stop with status 0 and their files are
compared.

In-process layer
----------------
The same case generator, fed straight into `zrsd.secondary.Receiver`
through `zrsd.protocol.FrameDecoder` (in random chunks) over
``ReplicaStorage(FileStorage(...)).writer`` for a plain and a blob source:
about a thousand cases per second (its files go to /dev/shm when there is
one: every commit is fsynced).  Same oracle and invariants (exceptions
other than `ProtocolError` may only come from the storage, not from
the protocol module; error texts are bounded; nothing of a transaction
stays open; markers), plus: the objects the safe unpickler hands out
(``_codecs.encode``'s wrapper, ``bytes``, the datetime types) are
snapshotted and must not change, and each epoch's file is reopened and
compared with the source.  Before anything runs, every "armed" hostile
pickle is loaded once with the plain `pickle.loads` to prove that it does
create its marker.
"""
import argparse
import collections
import contextlib
import datetime
import hashlib
import io
import logging
import os
import pickle
import random
import re
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, 'tests')
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import transaction  # noqa: E402
import ZEO  # noqa: E402
import ZODB  # noqa: E402
import ZODB.blob  # noqa: E402
import ZODB.FileStorage  # noqa: E402
from persistent.mapping import PersistentMapping  # noqa: E402
from ZODB.POSException import POSKeyError  # noqa: E402

import peers  # noqa: E402
import support  # noqa: E402
import zczrs  # noqa: E402
from zrsd import protocol as zrs  # noqa: E402
from zrsd.secondary import Receiver  # noqa: E402
from zrsd.storage import ReplicaStorage  # noqa: E402

Z64 = b'\0' * 8
BLOCK = zrs.BLOB_BLOCK_SIZE
MAX_FRAME = zrs.DEFAULT_MAX_FRAME   # the replicas run with the default
MAX_ERROR_LINE = 2000               # a "clear" ERROR line is shorter
WINDOW_NEED = 6                     # source txns a case may need after i
IO_TIMEOUT = 60.0                   # seconds before a peer counts as hung
PRIMARY_BATCH = 10                  # primary-side cases between commits
HANDSHAKE_TIMEOUT = 2               # the fuzzed primary's, seconds
SLOW_LORIS_AGE = 3                  # batches before a slow-loris is judged

VIOLATIONS = (
    'daemon crashes', 'executions', 'partial/unchecked transactions',
    'lost valid transactions', 'log', 'hangs', 'side effects', 'streams',
    'replica following', 'setup')

# Reasons found in the log for each family of rejection (for the summary).
REASON_FAMILIES = (
    ('checksum mismatch', 'checksum mismatch'),
    ('too large', 'frame too large'),
    ('refused global', 'refused global'),
    ('refused persistent id', 'refused persistent id'),
    ('refused _codecs.encode', 'refused _codecs.encode'),
    ('non-increasing tid', 'non-increasing tid'),
    ('record tid', 'record tid'),
    ('byte message after the handshake', 'message after the handshake'),
    ('unexpected', 'unexpected message'),
    ('undecodable', 'undecodable message'),
    ('bad ', 'bad field'),
    ('blob block of', 'blob block too big'),
    ('applying transaction', 'apply failed'),
    ('no handshake within', 'handshake timeout'),
    ('unknown protocol', 'unknown protocol'),
    ('is not in this storage', 'tid not in the history'),
    ('start tid of', 'tid not 8 bytes'),
)


def reason_family(text):
    for needle, family in REASON_FAMILIES:
        if needle in text:
            return family
    return 'other'


# ---------------------------------------------------------------------------
# Pickle opcodes, for hand-made (hostile or malformed) messages.

def U(text):
    """BINUNICODE: push a str."""
    data = text.encode('utf-8', 'surrogatepass')
    return b'X' + struct.pack('<I', len(data)) + data


def BY(data):
    """BINBYTES: push bytes (a protocol 3 opcode; needs no global)."""
    return b'B' + struct.pack('<I', len(data)) + data


def G(module, name):
    """GLOBAL: push module.name (resolved through find_class)."""
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def SG(module, name):
    """STACK_GLOBAL (protocol 4): module and name taken from the stack."""
    return U(module) + U(name) + b'\x93'


def TUP(*items):
    return b'(' + b''.join(items) + b't'


def LST(*items):
    return b'(' + b''.join(items) + b'l'


def DCT(*pairs):
    return b'(' + b''.join(k + v for k, v in pairs) + b'd'


def CALL(func, *args):
    """REDUCE: func(*args)."""
    return func + TUP(*args) + b'R'


def LONG(n):
    data = n.to_bytes((n.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(data)]) + data


PLACEHOLDER = 'zrsd-fuzz-placeholder-3f6c'


def embed(message, fragment):
    """Pickle `message` (protocol 1) with `fragment` in place of the one
    PLACEHOLDER string it contains.  The fragment must push one object."""
    clean = pickle.dumps(message, 1)
    marker = U(PLACEHOLDER)
    assert clean.count(marker) == 1, message
    return clean.replace(marker, fragment)


def message(kind, data):
    return pickle.dumps((kind, data), 1)


# ---------------------------------------------------------------------------
# Hostile pickles.  `build(marker)` returns opcodes that push one object and,
# if an unrestricted unpickler loaded them, create the file `marker`.

class _Reduce:
    """Pickled by the real pickler as func(*args) (a __reduce__ trick)."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):  # the pickler wants callables only
        raise TypeError('not for calling')


def _touch(marker):
    return 'touch %s' % marker


def _open_code(marker):
    return 'open(%r, "w").close()' % marker


class Hostile:
    """One hostile pickle: a fragment builder, or a whole-pickle builder
    (`top`) for output of the real pickler, which cannot be embedded."""

    def __init__(self, name, reason, build=None, top=None, armed=True):
        self.name = name
        self.reason = reason    # substring of zrsd's rejection, or None
        self.build = build
        self._top = top
        self.armed = armed      # executes under plain pickle.loads

    def top(self, marker):
        if self._top is not None:
            return self._top(marker)
        return self.build(marker) + b'.'


def _real(func, args_of, protocol):
    return lambda m: pickle.dumps(_Reduce(func, args_of(m)), protocol)


def _hostiles():
    import os as os_module
    import subprocess
    popen_args = lambda m: LST(U('touch'), U(m))  # noqa: E731
    items = [
        Hostile('os.system', 'refused global os.system',
                lambda m: CALL(G('os', 'system'), U(_touch(m)))),
        Hostile('posix.system', 'refused global posix.system',
                lambda m: CALL(G('posix', 'system'), U(_touch(m)))),
        Hostile('subprocess.Popen', 'refused global subprocess.Popen',
                lambda m: CALL(G('subprocess', 'Popen'), popen_args(m))),
        Hostile('subprocess.call', 'refused global subprocess.call',
                lambda m: CALL(G('subprocess', 'call'), popen_args(m))),
        Hostile('subprocess.getoutput', 'refused global subprocess.getoutput',
                lambda m: CALL(G('subprocess', 'getoutput'), U(_touch(m)))),
        Hostile('builtins.eval', 'refused global builtins.eval',
                lambda m: CALL(G('builtins', 'eval'), U(_open_code(m)))),
        Hostile('builtins.exec', 'refused global builtins.exec',
                lambda m: CALL(G('builtins', 'exec'), U(_open_code(m)))),
        Hostile('__builtin__.eval', 'refused global __builtin__.eval',
                lambda m: CALL(G('__builtin__', 'eval'), U(_open_code(m)))),
        Hostile('builtins.open', 'refused global builtins.open',
                lambda m: CALL(G('builtins', 'open'), U(m), U('w'))),
        Hostile('io.open', 'refused global io.open',
                lambda m: CALL(G('io', 'open'), U(m), U('w'))),
        Hostile('getattr-import', 'refused global builtins.getattr',
                lambda m: CALL(CALL(G('builtins', 'getattr'),
                                    CALL(G('builtins', '__import__'),
                                         U('os')), U('system')),
                               U(_touch(m)))),
        Hostile('__import__', 'refused global builtins.__import__',
                lambda m: CALL(CALL(G('builtins', '__import__'), U('os'))
                               + b'0' + G('os', 'system'), U(_touch(m)))),
        Hostile('copyreg._reconstructor',
                'refused global copyreg._reconstructor',
                lambda m: CALL(G('copyreg', '_reconstructor'),
                               G('subprocess', 'Popen'),
                               G('subprocess', 'Popen'), popen_args(m))),
        Hostile('copy_reg._reconstructor',
                'refused global copy_reg._reconstructor',
                lambda m: CALL(G('copy_reg', '_reconstructor'),
                               G('subprocess', 'Popen'),
                               G('subprocess', 'Popen'), popen_args(m))),
        Hostile('OBJ-Popen', 'refused global subprocess.Popen',
                lambda m: b'(' + G('subprocess', 'Popen') + popen_args(m)
                + b'o'),
        Hostile('INST-Popen', 'refused global subprocess.Popen',
                lambda m: b'(' + popen_args(m) + b'isubprocess\nPopen\n'),
        Hostile('STACK_GLOBAL-system', 'refused global os.system',
                lambda m: CALL(SG('os', 'system'), U(_touch(m)))),
        Hostile('NEWOBJ-Popen', 'refused global subprocess.Popen',
                lambda m: G('subprocess', 'Popen') + TUP(popen_args(m))
                + b'\x81', armed=False),
        Hostile('reduce-os.system-p0', 'refused global posix.system',
                top=_real(os_module.system, lambda m: (_touch(m),), 0)),
        Hostile('reduce-os.system-p1', 'refused global posix.system',
                top=_real(os_module.system, lambda m: (_touch(m),), 1)),
        # (Protocol 2 pickles name builtins the Python 2 way.)
        Hostile('reduce-eval-p2', 'refused global __builtin__.eval',
                top=_real(eval, lambda m: (
                    '__import__("os").system(%r)' % _touch(m),), 2)),
        Hostile('reduce-Popen-p4', 'refused global subprocess.Popen',
                top=_real(subprocess.Popen, lambda m: (['touch', m],), 4)),
        Hostile('reduce-getattr-p5', 'refused global builtins.getattr',
                top=lambda m: pickle.dumps(_Reduce(_Reduce(getattr, (
                    _Reduce(__import__, ('os',)), 'system')),
                    (_touch(m),)), 5)),
        Hostile('PERSID', 'refused persistent id',
                lambda m: b'P' + _touch(m).encode() + b'\n', armed=False),
        Hostile('BINPERSID', 'refused persistent id',
                lambda m: U(_touch(m)) + b'Q', armed=False),
        Hostile('EXT1', 'undecodable', lambda m: b'\x82\x01', armed=False),
        Hostile('EXT4', 'undecodable',
                lambda m: b'\x84\xff\xff\xff\x7f', armed=False),
        Hostile('codecs-rot13', 'refused _codecs.encode',
                lambda m: CALL(G('_codecs', 'encode'), U(m), U('rot13')),
                armed=False),
        Hostile('codecs-base64', 'refused _codecs.encode',
                lambda m: CALL(G('_codecs', 'encode'), BY(b'x'),
                               U('base64')), armed=False),
        Hostile('bytes-2**40', 'undecodable',
                lambda m: CALL(G('builtins', 'bytes'), LONG(2 ** 40)),
                armed=False),
        # BUILD with a slot state on an allowed global: setattr() on the
        # object the unpickler hands out, for the whole process.
        Hostile('BUILD-codecs.encode', None,
                lambda m: G('_codecs', 'encode') + TUP(b'N', DCT(
                    (U('__defaults__'), TUP(U('rot13'))))) + b'b',
                armed=False),
        Hostile('BUILD-bytes', None,
                lambda m: G('builtins', 'bytes') + TUP(b'N', DCT(
                    (U('fromhex'), U(m)))) + b'b', armed=False),
    ]
    return items


HOSTILES = _hostiles()

# Dangerous and odd global names for the random-global cases.
DANGEROUS_GLOBALS = [
    ('os', 'system'), ('os', 'popen'), ('os', 'execv'), ('os', 'remove'),
    ('posix', 'system'), ('nt', 'system'), ('subprocess', 'Popen'),
    ('subprocess', 'check_output'), ('builtins', 'eval'),
    ('builtins', 'exec'), ('builtins', 'compile'), ('builtins', 'open'),
    ('builtins', 'getattr'), ('builtins', 'setattr'),
    ('builtins', '__import__'), ('builtins', 'globals'),
    ('builtins', 'bytes.fromhex'), ('builtins', 'bytearray'),
    ('builtins', 'type'), ('builtins', 'object'), ('__builtin__', 'eval'),
    ('copyreg', '_reconstructor'), ('copy_reg', '_reconstructor'),
    ('pickle', 'loads'), ('_pickle', 'loads'), ('marshal', 'loads'),
    ('types', 'FunctionType'), ('types', 'CodeType'), ('ctypes', 'CDLL'),
    ('shutil', 'rmtree'), ('importlib', 'import_module'),
    ('runpy', 'run_path'), ('code', 'InteractiveInterpreter'),
    ('zrsd.protocol', 'SafeUnpickler'), ('zrsd.protocol', '_BUILTIN_GLOBALS'),
    ('_codecs', 'decode'), ('codecs', 'encode'), ('_codecs', 'lookup'),
    ('datetime', 'sys'), ('datetime', 'datetime.now'),
    ('datetime', '_time'), ('ZODB.FileStorage', 'FileStorage'),
    ('twisted.internet', 'reactor'), ('signal', 'raise_signal'),
    ('sys', 'exit'), ('os', '_exit'), ('faulthandler', '_sigsegv'),
    ('', ''), ('os', ''), ('', 'system'), ('..', '..'),
    ('\u00e9t\u00e9', 'caf\u00e9'), ('os.path', 'join'),
]


def random_name(rng):
    alphabet = 'abcdefghijklmnopqrstuvwxyz_.0123456789ABCXYZ\u00e9\u4e2d '
    return ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))


def arm_check(directory):
    """Load every armed hostile pickle with plain `pickle.loads`.

    Proves the payloads are real: each must create its marker.  Returns
    (armed, [names that did not fire]).
    """
    os.makedirs(directory, exist_ok=True)
    duds = []
    armed = [h for h in HOSTILES if h.armed]
    for number, hostile in enumerate(armed):
        marker = os.path.join(directory, 'control-%d' % number)
        try:
            result = pickle.loads(hostile.top(marker))
            for method in ('wait', 'close'):
                if hasattr(result, method):
                    getattr(result, method)()
        except Exception:
            pass
        if not os.path.exists(marker):
            duds.append(hostile.name)
    shutil.rmtree(directory, ignore_errors=True)
    return len(armed), duds


# ---------------------------------------------------------------------------
# The source histories.

class FakeClock:
    """A `time.time` that advances 1.5 s per call from 2020-01-01."""

    def __init__(self):
        self.now = 1577836800.0

    def __call__(self):
        self.now += 1.5
        return self.now


class Rec:
    __slots__ = ('oid', 'tid', 'data', 'data_txn', 'blob')

    def __init__(self, oid, tid, data, data_txn, blob):
        self.oid, self.tid, self.data = oid, tid, data
        self.data_txn, self.blob = data_txn, blob


class SourceTxn:
    """One source transaction, with the frames a primary sends for it (the
    C frame excepted: its digest depends on the connection)."""

    def __init__(self, tid, status, user, description, extension, records):
        self.tid, self.status, self.user = tid, status, user
        self.description, self.extension = description, extension
        self.records = records
        self.comparable = (tid, status, user, description, extension,
                           [(r.oid, r.tid, r.data, r.data_txn)
                            for r in records])
        self.begin = message('T', (tid, status, user, description,
                                   extension))
        self.frames = [('T', self.begin)]
        self.legacy = [('T', self.begin)]
        for r in records:
            self.legacy.append(('S', message(
                'S', (r.oid, tid, '', r.data, r.data_txn))))
            if r.blob is None:
                self.frames.append(('S', message(
                    'S', (r.oid, tid, '', r.data_txn))))
                self.frames.append(('data', r.data or b''))
            else:
                blocks = [r.blob[p:p + BLOCK]
                          for p in range(0, len(r.blob), BLOCK)]
                self.frames.append(('B', message(
                    'B', (r.oid, tid, '', r.data_txn, len(blocks)))))
                self.frames.append(('data', r.data))
                self.frames.extend(('block', b) for b in blocks)

    def record_frames(self, r, legacy=False):
        """The frames of record number `r` (without T and C)."""
        frames = self.legacy if legacy else self.frames
        if legacy:
            return [frames[1 + r]]
        out, count = [], -1
        for kind, payload in frames[1:]:
            if kind in ('S', 'B'):
                count += 1
            if count == r:
                out.append((kind, payload))
            elif count > r:
                break
        return out


class Source:
    """A built source history: `txns`, and the index of each tid."""

    def __init__(self, name, path, blob_dir, txns):
        self.name, self.path, self.blob_dir = name, path, blob_dir
        self.txns = txns
        self.index = {Z64: 0}
        for number, txn in enumerate(txns):
            self.index[txn.tid] = number + 1

    def __len__(self):
        return len(self.txns)

    def tid(self, position):
        """The tid a replica holding `position` transactions has last."""
        return self.txns[position - 1].tid if position else Z64


BLOB_SIZES = [0, 1, 1000, BLOCK, BLOCK + 1, 140000]


def build_source(directory, name, ntxns, blobs=False):
    """Write a source FileStorage of about `ntxns` transactions (with the
    fake clock, so it is the same on every run) and read it back."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name + '.fs')
    blob_dir = os.path.join(directory, name + '.blobs') if blobs else None
    rng = random.Random(20240611)
    ops = ['create', 'change', 'big', 'undo', 'create', 'undo',
           'change-many', 'meta']
    if blobs:
        ops += ['blob-new', 'blob-change', 'undo', 'blob-new']
    with mock.patch('time.time', FakeClock()):
        storage = ZODB.FileStorage.FileStorage(path, blob_dir=blob_dir)
        db = ZODB.DB(storage)
        tm = transaction.TransactionManager()
        conn = db.open(tm)
        try:
            root = conn.root()
            objects, blob_objects = [], []
            created = None   # the list that got an object last transaction
            for step in range(max(1, ntxns - 1)):
                op = ops[step % len(ops)]
                tm.begin()
                txn = tm.get()
                if op == 'undo':
                    db.undo(db.undoLog(0, 1)[0]['id'], txn)
                    txn.note('undo')
                    if created is not None:
                        created.pop()   # an undone creation: gone
                created = None
                if op == 'undo':
                    pass
                elif op == 'create' or not objects:
                    obj = PersistentMapping(payload=rng.randbytes(
                        rng.randint(10, 3000)), version=0)
                    root['o%d' % len(objects)] = obj
                    objects.append(obj)
                    created = objects
                    txn.note('create o%d' % (len(objects) - 1))
                elif op in ('change', 'big', 'meta'):
                    obj = rng.choice(objects)
                    size = (rng.randint(20000, 70000) if op == 'big'
                            else rng.randint(1, 2000))
                    obj['payload'] = rng.randbytes(size)
                    obj['version'] += 1
                    if op == 'meta':
                        txn.setUser('alice\u00e9')
                        txn.note('caf\u00e9 %d' % step)
                        txn.setExtendedInfo('ticket', step)
                        txn.setExtendedInfo('when', datetime.datetime(
                            2020, 1, 1) + datetime.timedelta(hours=step))
                        txn.setExtendedInfo('tags', ['a', 'b', (1, 2.5)])
                elif op == 'change-many':
                    for obj in rng.sample(objects, min(4, len(objects))):
                        obj['version'] += 1
                elif op == 'blob-new':
                    size = BLOB_SIZES[len(blob_objects) % len(BLOB_SIZES)]
                    blob = ZODB.blob.Blob()
                    with blob.open('w') as f:
                        f.write(rng.randbytes(size))
                    root['b%d' % len(blob_objects)] = blob
                    blob_objects.append(blob)
                    created = blob_objects
                    txn.note('blob of %d bytes' % size)
                elif op == 'blob-change':
                    blob = rng.choice(blob_objects)
                    with blob.open('w') as f:
                        f.write(rng.randbytes(rng.choice(BLOB_SIZES)))
                tm.commit()
        finally:
            tm.abort()
            conn.close()
            db.close()
    return Source(name, path, blob_dir, read_source(path, blob_dir))


def read_source(path, blob_dir=None):
    fs = ZODB.FileStorage.FileStorage(path, blob_dir=blob_dir,
                                      read_only=True)
    try:
        txns = []
        for t in fs.iterator():
            records = []
            for r in t:
                blob = None
                if blob_dir and r.data and ZODB.blob.is_blob_record(r.data):
                    try:
                        with open(fs.loadBlob(r.oid, r.tid), 'rb') as f:
                            blob = f.read()
                    except (OSError, POSKeyError):
                        blob = None
                records.append(Rec(r.oid, r.tid, r.data, r.data_txn, blob))
            txns.append(SourceTxn(t.tid, t.status, t.user, t.description,
                                  dict(t.extension), records))
        return txns
    finally:
        fs.close()


# ---------------------------------------------------------------------------
# Streams.

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


class CaseGenerator:
    """Cases for one lane (see the module docstring)."""

    def __init__(self, source, lane, seed, markers, blobs):
        self.source = source
        self.lane = lane
        self.seed = seed
        self.markers = markers
        self.blobs = blobs
        menu = BYTE_KINDS * 2 + FRAME_KINDS + SYNTHETIC_KINDS * 2
        # Legacy streams carry no blobs: not for the blob lane.
        menu += BLOB_ONLY * 2 if blobs else PLAIN_ONLY * 2 + LEGACY_KINDS
        self.menu = menu

    def rng(self, number):
        return random.Random('%s/%s/%d' % (self.seed, self.lane, number))

    def marker(self, number):
        return os.path.join(self.markers, '%s-%d' % (self.lane, number))

    def case(self, number, start, kind=None):
        rng = self.rng(number)
        txns = self.source.txns
        available = len(txns) - start
        assert available >= 1
        a = min(rng.choice([0, 0, 0, 1, 1, 2]), available - 1)
        b = min(rng.randint(1, 3), available - a)
        prefix = txns[start:start + a]
        window = txns[start + a:start + a + b]
        kind = kind or rng.choice(self.menu)
        legacy = kind.startswith('legacy-')
        valid = Builder(self.source.tid(start), legacy)
        for txn in prefix:
            valid.txn(txn)
        mark_frames, mark = len(valid.frames), valid.size
        for txn in window:
            valid.txn(txn)
        valid_wire = valid.wire()
        ctx = dict(rng=rng, number=number, start=start, a=a, prefix=prefix,
                   window=window, valid=valid, mark_frames=mark_frames,
                   mark=mark, valid_wire=valid_wire, legacy=legacy)
        if kind in BYTE_KINDS:
            wire, expect, reason, detail = self._bytes(kind, ctx)
        elif kind in FRAME_KINDS or legacy:
            wire, expect, reason, detail = self._frames(kind, ctx)
        else:
            wire, expect, reason, detail = self._synthetic(kind, ctx)
        commits = a + committed(valid_wire, valid.commits[len(prefix):],
                                wire)
        return Case(self.lane, number, kind, start, wire, commits, expect,
                    reason, detail)

    # -- byte mutations ----------------------------------------------------

    def _bytes(self, kind, ctx):
        rng, wire, lo = ctx['rng'], bytearray(ctx['valid_wire']), ctx['mark']
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
            starts = self._frame_starts(ctx)
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

    def _frame_starts(self, ctx):
        starts, pos = [], 0
        for index, (_, payload) in enumerate(ctx['valid'].frames):
            if index >= ctx['mark_frames']:
                starts.append(pos)
            pos += 4 + len(payload)
        return starts

    # -- frame mutations (checksums as the primary computed them) ---------

    def _frames(self, kind, ctx):
        rng = ctx['rng']
        frames = list(ctx['valid'].frames)
        lo = ctx['mark_frames']
        window = list(range(lo, len(frames)))
        base = kind[len('legacy-'):] if ctx['legacy'] else kind
        expect, reason = 'any', None

        def pick(kinds):
            choices = [i for i in window if frames[i][0] in kinds]
            return rng.choice(choices)

        if base == 'truncate':
            pos = rng.randrange(ctx['mark'], len(ctx['valid_wire']))
            return ctx['valid_wire'][:pos], 'close', None, 'at %d' % (
                pos - ctx['mark'])
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
                return self._frames('dup-frame', ctx)
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
        return serialize(frames), expect, reason, detail

    # -- synthetic bad parts (correct checksums) ---------------------------

    def _synthetic(self, kind, ctx):
        rng, window, number = ctx['rng'], ctx['window'], ctx['number']
        marker = self.marker(number)
        b = Builder(self.source.tid(ctx['start']))
        for txn in ctx['prefix']:
            b.txn(txn)
        k = rng.randrange(len(window))
        for txn in window[:k]:
            b.txn(txn)
        txn = window[k]
        last_tid = (window[k - 1].tid if k else
                    ctx['prefix'][-1].tid if ctx['prefix'] else
                    self.source.tid(ctx['start']))
        oid = txn.records[0].oid
        expect, reason, detail = 'reject', None, ''

        def inside(max_records=None):
            """Open `txn` and send some of its records; returns how many."""
            n = len(txn.records)
            count = rng.randint(0, n if max_records is None
                                else min(n, max_records))
            b.begin(txn).records(txn, count)
            return count

        if kind == 'hostile-message':
            hostile = rng.choice(HOSTILES)
            if rng.random() < 0.5:
                inside()
            b.frame('M', hostile.top(marker))
            reason, detail = hostile.reason, hostile.name
        elif kind == 'hostile-extension':
            # (Not the BUILD ones: they push an allowed object, which an
            # extension may hold.)
            hostile = rng.choice([h for h in HOSTILES
                                  if h.build and h.reason])
            ext = dict(txn.extension, evil=PLACEHOLDER)
            b.frame('T', embed(('T', (txn.tid, txn.status, txn.user,
                                      txn.description, ext)),
                               hostile.build(marker)))
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
            b.frame('M', embed(shapes[field], hostile.build(marker)))
            reason, detail = hostile.reason, '%s in %s' % (hostile.name,
                                                          field)
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
            b.frame('M', CALL(opcode, U(_touch(marker))) + b'.')
            detail = '%s.%s' % (module, name)
        elif kind in ('lower-tid', 'equal-tid'):
            if kind == 'equal-tid' or last_tid == Z64:
                tid = last_tid
            else:
                earlier = [t.tid for t in self.source.txns
                           if t.tid < last_tid]
                tid = rng.choice(earlier + [Z64, _tid_minus(last_tid)])
            b.begin(txn, tid)
            for r in txn.records:
                b.message('S', (r.oid, tid, '', r.data_txn))
                b.frame('data', r.data or b'')
            b.commit()
            reason, detail = 'non-increasing tid', tid.hex()
        elif kind == 'record-tid':
            inside()
            other = rng.choice([last_tid, Z64, _tid_plus(txn.tid),
                                rng.randbytes(8)])
            b.message('S', (oid, other, '', None))
            b.frame('data', b'record data')
            reason = 'record tid'
        elif kind == 'bad-field':
            phase = rng.choice(['T', 'in'])
            if phase == 'in':
                inside()
                shapes = self._bad_in_transaction(txn, oid)
            else:
                shapes = self._bad_begin(txn)
            name, payload, reason = rng.choice(shapes)
            b.frame('M', payload)
            detail = name
        elif kind == 'bad-checksum':
            b.txn(txn, digest=rng.randbytes(16))
            reason = 'checksum mismatch'
        elif kind == 'empty-message':
            if rng.random() < 0.5:
                inside()
            b.frame('M', b'')
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
            b.frame('M', CALL(G('os', name), U(_touch(marker))) + b'.')
            reason, detail = 'refused global', 'name of %d' % len(name)
        elif kind == 'blob-to-plain':
            b.begin(txn)
            b.message('B', (oid, txn.tid, '', None, 1))
            b.frame('data', txn.records[0].data or b'x')
            b.frame('block', b'blob content')
            b.commit()
            reason = 'blob-dir'
        elif kind in ('huge-nblocks', 'huge-nblocks-big-block'):
            inside()
            blob_rec = next((r for r in txn.records if r.blob is not None),
                            txn.records[0])
            b.message('B', (blob_rec.oid, txn.tid, '', None, 10 ** 12))
            b.frame('data', blob_rec.data or b'')
            for _ in range(rng.randint(0, 4)):
                b.frame('block', rng.randbytes(rng.choice([1, 100, BLOCK])))
            if kind == 'huge-nblocks':
                expect = 'close'
            else:
                b.frame('block', rng.randbytes(BLOCK + rng.randint(1, 100)))
                reason = 'exceeds'
        else:
            raise ValueError(kind)
        return b.wire(), expect, reason, detail

    @staticmethod
    def _bad_begin(txn):
        tid = txn.tid
        T = lambda *f: message('T', f)  # noqa: E731
        return [
            ('short tid', T(tid[:7], ' ', b'', b'', {}), 'bad T message'),
            ('str tid', T(tid.hex(), ' ', b'', b'', {}), 'bad T message'),
            ('long status', T(tid, '  ', b'', b'', {}), 'bad T message'),
            ('int status', T(tid, 32, b'', b'', {}), 'bad T message'),
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
            ('truncated pickle', txn.begin[:-3], 'undecodable'),
            ('deep nesting', b'(' * 50000 + b'.', 'undecodable'),
            ('protocol 5', pickle.dumps(('T', (tid, ' ', b'', b'', {})), 5)
             [:-1] + b'\xff.', 'undecodable'),
        ]

    @staticmethod
    def _bad_in_transaction(txn, oid):
        tid = txn.tid
        S = lambda *f: message('S', f)  # noqa: E731
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


def _tid_plus(tid):
    return (int.from_bytes(tid, 'big') + 1).to_bytes(8, 'big')


def _tid_minus(tid):
    return (int.from_bytes(tid, 'big') - 1).to_bytes(8, 'big')


# ---------------------------------------------------------------------------
# Results.

class LaneAbort(Exception):
    """A lane cannot go on (its daemon died or hung); already recorded."""


class Summary:
    """Counters and violations of a run; thread-safe."""

    def __init__(self, directory, seed, cases):
        self.directory = directory
        self.seed = seed
        self.cases = cases
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.reasons = collections.defaultdict(collections.Counter)
        self.violations = []
        self.kinds = collections.Counter()   # (category, case kind)
        self.notes = []
        self.started = time.monotonic()
        self.elapsed = None
        self.seconds = collections.Counter()

    def add(self, side, key, n=1):
        with self.lock:
            self.counts[side, key] += n

    def get(self, side, key):
        return self.counts[side, key]

    def reason(self, side, text):
        with self.lock:
            self.reasons[side][reason_family(text)] += 1

    def violation(self, category, side, text, case=None):
        assert category in VIOLATIONS, category
        if case is not None:
            text = '%s\n    %s' % (case.describe(), text)
            path = self._save(case, category, text)
            text += '\n    wire bytes: %s' % path
        with self.lock:
            self.violations.append((category, side, text))
            self.kinds[category, case.kind if case else '-'] += 1

    def _save(self, case, category, text):
        directory = os.path.join(self.directory, 'violations')
        os.makedirs(directory, exist_ok=True)
        base = os.path.join(directory, '%s-%d' % (case.lane, case.number))
        with open(base + '.bin', 'wb') as f:
            f.write(case.wire)
        with open(base + '.txt', 'a') as f:
            f.write('seed %s; %s: %s\n' % (self.seed, category, text))
        return base + '.bin'

    @property
    def clean(self):
        return not self.violations

    def count(self, category):
        return sum(1 for c, _, _ in self.violations if c == category)

    def report(self, details=20):
        c = self.get
        lines = ['zrsd fuzz, seed %s: %d cases per side, %d in-process; '
                 '%.1f s' % (self.seed, self.cases, c('in-process', 'cases'),
                             self.elapsed or 0.0)]
        if c('secondary', 'cases'):
            lines.append(
                '  secondary   %d cases (plain %d, blobs %d) = %d '
                'connections: %d rejected with an ERROR, %d ended without '
                'one; %d transactions committed; %d replica epochs; %.1f s'
                % (c('secondary', 'cases'), c('secondary', 'cases plain'),
                   c('secondary', 'cases blobs'),
                   c('secondary', 'connections'),
                   c('secondary', 'rejected'), c('secondary', 'closed'),
                   c('secondary', 'commits'), c('secondary', 'epochs'),
                   self.seconds['secondary']))
        if c('primary', 'cases'):
            lines.append(
                '  primary     %d cases = %d connections: %d refused with an '
                'ERROR, %d without one; %d streams verified (%d '
                'transactions); %d batches, the replica followed %d; %.1f s'
                % (c('primary', 'cases'), c('primary', 'connections'),
                   c('primary', 'refused'), c('primary', 'not refused'),
                   c('primary', 'streams verified'),
                   c('primary', 'transactions verified'),
                   c('primary', 'batches'), c('primary', 'followed'),
                   self.seconds['primary']))
        if c('in-process', 'cases'):
            seconds = self.seconds['in-process'] or 1e-9
            lines.append(
                '  in-process  %d cases: %d rejected, %d ended without error;'
                ' %d transactions committed; %d epochs; %.0f cases/s'
                % (c('in-process', 'cases'), c('in-process', 'rejected'),
                   c('in-process', 'closed'), c('in-process', 'commits'),
                   c('in-process', 'epochs'),
                   c('in-process', 'cases') / seconds))
        for side in ('secondary', 'primary', 'in-process'):
            if self.reasons[side]:
                lines.append('  %-11s rejections: %s' % (side, ', '.join(
                    '%s %d' % item
                    for item in self.reasons[side].most_common())))
        lines.extend('  ' + note for note in self.notes)
        lines.append('  violations:')
        for category in VIOLATIONS:
            kinds = sorted(((n, kind) for (c, kind), n in self.kinds.items()
                            if c == category), reverse=True)
            lines.append('    %-32s %d%s' % (
                category, self.count(category), '  (%s)' % ', '.join(
                    '%s %d' % (kind, n) for n, kind in kinds)
                if kinds else ''))
        for category, side, text in self.violations[:details]:
            lines.append('  - [%s] %s: %s' % (side, category, text))
        if len(self.violations) > details:
            lines.append('  ... and %d more' % (
                len(self.violations) - details))
        lines.append('  result: %s' % ('CLEAN' if self.clean else
                                       'VIOLATIONS (all of them in %s)'
                                       % os.path.join(self.directory,
                                                      'violations.txt')))
        return '\n'.join(lines)


def judge(summary, side, case, error_text, line=None):
    """Check one connection's outcome against the case's expectation.

    `error_text` is the rejection reason (None: the stream just ended);
    `line` the whole ERROR line (its length is checked).
    """
    if error_text is None:
        summary.add(side, 'closed')
        if case.expect == 'reject':
            summary.violation('log', side, 'a must-reject case ended '
                              'without an ERROR', case)
        return
    summary.add(side, 'rejected')
    summary.reason(side, error_text)
    line = line or error_text
    if len(line) > MAX_ERROR_LINE:
        summary.violation('log', side, 'ERROR line of %d characters: %s...'
                          % (len(line), line[:300]), case)
    if case.expect == 'close':
        summary.violation('log', side, 'ERROR for a stream that just ended: '
                          '%s' % line[:500], case)
    elif case.reason and case.reason not in error_text:
        summary.violation('log', side, 'ERROR does not name %r: %s'
                          % (case.reason, line[:500]), case)


def compare_history(summary, side, case, source, first, got):
    """`got` must be the comparable transactions source.txns[first:...]."""
    expected = [t.comparable for t in source.txns[first:first + len(got)]]
    for number, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            what = 'tid %s where the source has %s' % (
                g[0].hex(), e[0].hex()) if g[0] != e[0] else \
                'transaction %s differs from the source' % e[0].hex()
            summary.violation('partial/unchecked transactions', side,
                              'replica transaction %d: %s' % (
                                  first + number, what), case)
            return False
    return True


# ---------------------------------------------------------------------------
# Logs.

LOG_LINE = re.compile(
    r'^(\d{4}-\d\d-\d\dT\S+) (TRACE|DEBUG|BLATHER|INFO|WARNING|ERROR|'
    r'CRITICAL|PROBLEM) (\S+) ?(.*)$')
PORT = re.compile(r'-> 127\.0\.0\.1:(\d+): ')
def judge_position(summary, side, case, position, expected):
    """The replica must hold exactly the transactions whose commit was
    intact: fewer lost a valid one, more committed an unchecked one."""
    if position < expected:
        summary.violation('lost valid transactions', side,
                          'at source index %d, expected %d' % (
                              position, expected), case)
    elif position > expected:
        summary.violation('partial/unchecked transactions', side,
                          'at source index %d, expected %d' % (
                              position, expected), case)


# Expected WARNINGs: a corrupted record restored before its commit's
# checksum rejects the stream may differ from its back pointer's data
# (FileStorage says so; zrsd makes that a WARNING).
ALLOWED_WARNINGS = ('cannot connect', 'commits without checksums',
                    'back pointer of', 'Mismatch between data and backpointer')


class Record:
    __slots__ = ('level', 'logger', 'message', 'line', 'extra')

    def __init__(self, level, logger, message, line):
        self.level, self.logger, self.message = level, logger, message
        self.line = line
        self.extra = []

    @property
    def is_error(self):
        return self.level in ('ERROR', 'CRITICAL')


class LogTail:
    """Parse a zrsd log file incrementally into `Record`s (a record's
    traceback lines go to its `extra`)."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.pending = b''
        self.records = []
        self.ports = collections.defaultdict(list)
        self.connected = []   # indices of 'connected (' records (replicas)

    def poll(self):
        try:
            with open(self.path, 'rb') as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self.records
        self.offset += len(data)
        lines = (self.pending + data).split(b'\n')
        self.pending = lines.pop()
        for raw in lines:
            line = raw.decode('utf-8', 'replace')
            m = LOG_LINE.match(line)
            if m is None:
                if self.records:
                    self.records[-1].extra.append(line)
                else:
                    self.records.append(Record('?', '?', line, line))
                continue
            record = Record(m.group(2), m.group(3), m.group(4), line)
            self.records.append(record)
            port = PORT.search(record.message)
            if port:
                self.ports[int(port.group(1))].append(record)
            if record.logger == 'zrsd.client' and \
                    ': connected (' in record.message:
                self.connected.append(len(self.records) - 1)
        return self.records


_ZRSD_FILE = re.compile(r'File "([^"]*%szrsd%s[^"]*\.py)"' % (
    re.escape(os.sep), re.escape(os.sep)))


def traceback_from_protocol(lines):
    """Did the exception of this traceback come out of zrsd/protocol.py?

    The innermost zrsd frame tells: every traceback passes through
    `FrameDecoder.feed`, but a decoding error must not come from there.
    """
    files = [m.group(1) for line in lines for m in _ZRSD_FILE.finditer(line)]
    return bool(files) and files[-1].endswith(
        os.path.join('zrsd', 'protocol.py'))


# ---------------------------------------------------------------------------
# The in-process layer.

def unpickler_objects():
    """The objects `SafeUnpickler` hands out by default."""
    objects = dict(zrs._BUILTIN_GLOBALS)
    objects.update(zrs.resolve_globals(zrs.DEFAULT_ALLOWED_GLOBALS))
    return objects


_FUNCTION_ATTRS = ('__defaults__', '__kwdefaults__', '__name__',
                   '__qualname__', '__module__', '__doc__', '__code__')


def snapshot(objects):
    state = {}
    for key, obj in objects.items():
        attrs = {name: getattr(obj, name, None) for name in _FUNCTION_ATTRS}
        attrs['__dict__'] = dict(vars(obj)) if hasattr(obj, '__dict__') \
            else None
        state[key] = attrs
    return state


def restore(objects, state):
    for key, obj in objects.items():
        for name, value in state[key].items():
            if name == '__dict__':
                if value is not None and isinstance(vars(obj), dict):
                    vars(obj).clear()
                    vars(obj).update(value)
            elif getattr(obj, name, None) is not value:
                try:
                    setattr(obj, name, value)
                except (AttributeError, TypeError):
                    pass


def chunks(data, rng):
    """`data` in pieces, as TCP might deliver it."""
    mode = rng.random()
    if mode < 0.4:
        yield data
        return
    if mode < 0.5 and len(data) < 4000:
        for i in range(len(data)):
            yield data[i:i + 1]
        return
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 9000)
        yield data[pos:pos + n]
        pos += n


class LogCapture(logging.Handler):
    """Collects this process's WARNING+ log records while the in-process
    layer runs (zrsd's and ZODB's), as the daemon's log file would."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        root = logging.getLogger()
        self.level = root.level
        if root.level > logging.WARNING or root.level == logging.NOTSET:
            root.setLevel(logging.WARNING)
        root.addHandler(self)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self.level)

    def take(self):
        records, self.records = self.records, []
        return records


class InProcessLane:
    """Cases fed to a `Receiver` over a real FileStorage, in this process."""

    side = 'in-process'

    def __init__(self, source, generator, directory, summary, markers,
                 check_checksums=True):
        self.source = source
        self.generator = generator
        self.directory = directory
        self.summary = summary
        self.markers = markers
        self.check_checksums = check_checksums
        self.decoder = zrs.MessageDecoder()
        self.objects = unpickler_objects()
        self.state = snapshot(self.objects)
        self.epoch = 0
        self.fs = self.replica = None

    def run(self, cases):
        with LogCapture() as self.logs:
            self.open()
            try:
                for number in range(cases):
                    if len(self.source) - self.position < WINDOW_NEED:
                        self.close()
                        self.open()
                    self.run_case(self.generator.case(number, self.position))
            finally:
                self.close()

    def open(self):
        self.epoch += 1
        self.summary.add(self.side, 'epochs')
        base = os.path.join(self.directory, '%s-%d' % (
            self.generator.lane, self.epoch))
        self.fs_path = base + '.fs'
        self.blob_dir = base + '.blobs' if self.source.blob_dir else None
        self.fs = ZODB.FileStorage.FileStorage(self.fs_path,
                                               blob_dir=self.blob_dir)
        self.replica = ReplicaStorage(self.fs)
        self.position = 0

    def close(self):
        if self.fs is None:
            return
        self.fs.close()
        self.fs = None
        check_file(self.summary, self.side, self.source, self.fs_path,
                   self.blob_dir, self.position)
        for path in (self.fs_path, self.fs_path + '.index',
                     self.fs_path + '.lock', self.fs_path + '.tmp'):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        if self.blob_dir:
            shutil.rmtree(self.blob_dir, ignore_errors=True)

    def run_case(self, case):
        summary, side = self.summary, self.side
        summary.add(side, 'cases')
        rng = random.Random('%s/%s/%d/chunks' % (
            self.generator.seed, case.lane, case.number))
        writer = self.replica.writer
        receiver = Receiver(writer, self.source.tid(self.position),
                            decoder=self.decoder,
                            check_checksums=self.check_checksums)
        frames = zrs.FrameDecoder(receiver.frame_received, MAX_FRAME)
        error = None
        try:
            for chunk in chunks(case.wire, rng):
                frames.feed(chunk)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            error = exc
        finally:
            receiver.abort()   # what connectionLost does
        text = None
        if isinstance(error, zrs.ProtocolError):
            text = 'replication stream rejected: %s' % error
        elif isinstance(error, Exception):
            text = 'applying transaction %s failed: %s: %s' % (
                receiver.failed_tid.hex() if receiver.failed_tid else 'none',
                type(error).__name__, error)
            if traceback_from_protocol(
                    traceback.format_tb(error.__traceback__)):
                summary.violation(
                    'log', side, 'the protocol module raised %s instead of '
                    'ProtocolError: %s' % (type(error).__name__,
                                           str(error)[:200]), case)
        elif error is not None:
            summary.violation('daemon crashes', side, '%s escaped the '
                              'receiver: %s' % (type(error).__name__, error),
                              case)
            text = str(error)
        judge(summary, side, case, text)
        for record in self.logs.take():
            message = record.getMessage()
            if record.levelno >= logging.ERROR:
                summary.violation('log', side, 'a second ERROR, from %s: %s'
                                  % (record.name, message[:300]), case)
            elif not any(w in message for w in ALLOWED_WARNINGS):
                summary.violation('log', side, 'unexpected WARNING from %s:'
                                  ' %s' % (record.name, message[:300]), case)
        self.check_state(case)

    def check_state(self, case):
        summary, side, fs = self.summary, self.side, self.fs
        left_open = (self.replica.writer._transaction is not None
                     or fs._transaction is not None)
        if left_open:
            summary.violation('hangs', side, 'a transaction was left open '
                              'after the connection ended', case)
        if not fs._commit_lock.acquire(False):
            summary.violation('hangs', side, 'the storage commit lock is '
                              'still held', case)
            left_open = True
        else:
            fs._commit_lock.release()
        if left_open:
            with contextlib.suppress(Exception):
                fs.tpc_abort(fs._transaction)
        position = self.source.index.get(fs.lastTransaction())
        expected = case.start + case.commits
        if position is None:
            summary.violation('partial/unchecked transactions', side,
                              'committed tid %s is not in the source'
                              % fs.lastTransaction().hex(), case)
            raise LaneAbort()
        judge_position(summary, side, case, position, expected)
        if position > self.position:
            got = [comparable(t) for t in fs.iterator(
                self.source.tid(self.position + 1))]
            compare_history(summary, side, case, self.source, self.position,
                            got)
            summary.add(side, 'commits', position - self.position)
        self.position = position
        check_markers(summary, side, self.markers, case)
        if self.blob_dir:
            check_blob_temp(summary, side, self.blob_dir, case)
        if snapshot(self.objects) != self.state:
            changed = sorted(
                '%s.%s' % key for key, attrs in snapshot(self.objects).items()
                if attrs != self.state[key])
            summary.violation('side effects', side, 'a message pickle '
                              'changed objects of the unpickler: %s'
                              % ', '.join(changed), case)
            restore(self.objects, self.state)


def comparable(t):
    return (t.tid, t.status, t.user, t.description, dict(t.extension),
            [(r.oid, r.tid, r.data, r.data_txn) for r in t])


def check_markers(summary, side, markers, case):
    found = os.listdir(markers)
    if found:
        summary.violation('executions', side, 'a hostile pickle ran: %s '
                          'exists' % ', '.join(sorted(found)), case)
        for name in found:
            os.remove(os.path.join(markers, name))


def check_blob_temp(summary, side, blob_dir, case):
    tmp = os.path.join(blob_dir, 'tmp')
    left = [n for n in os.listdir(tmp) if n.startswith('zrsd-')] \
        if os.path.isdir(tmp) else []
    if left:
        summary.violation('side effects', side, 'temporary blob files left '
                          'behind: %s' % ', '.join(left), case)
        for name in left:
            os.remove(os.path.join(tmp, name))


def check_file(summary, side, source, path, blob_dir, position):
    """Reopen a replica's file: it must hold source.txns[:position] exactly,
    blob files included."""
    fs = ZODB.FileStorage.FileStorage(path, blob_dir=blob_dir,
                                      read_only=True)
    try:
        got = [comparable(t) for t in fs.iterator()]
        if len(got) != position:
            summary.violation('partial/unchecked transactions', side,
                              '%s holds %d transactions, expected %d'
                              % (path, len(got), position))
        if not compare_history(summary, side, None, source, 0, got):
            return
        if blob_dir:
            for txn in source.txns[:position]:
                for r in txn.records:
                    if r.blob is None:
                        continue
                    try:
                        with open(fs.loadBlob(r.oid, r.tid), 'rb') as f:
                            content = f.read()
                    except (OSError, POSKeyError) as exc:
                        content = exc
                    if content != r.blob:
                        summary.violation(
                            'partial/unchecked transactions', side,
                            'blob of %s at %s differs from the source (%s)'
                            % (r.oid.hex(), r.tid.hex(), content
                               if isinstance(content, Exception)
                               else '%d bytes' % len(content)))
    finally:
        fs.close()


# ---------------------------------------------------------------------------
# The secondary side: zrsd replicas and a case server.

REPLICA_CONFIG = """\
<zeo>
  address 127.0.0.1:%(zeo_port)d
  serve-empty true
</zeo>
<zrs 1>
  replicate-from 127.0.0.1:%(primary_port)d
  reconnect-delay 0.1
  max-reconnect-delay 0.1
  keep-alive-delay 0
  <filestorage>
    path %(fs_path)s
%(blob)s  </filestorage>
</zrs>
""" + peers.LOG_SECTION.replace('level INFO', 'level DEBUG').replace(
    '%', '%%')

ZRSD = os.path.join(support.BIN, 'zrsd')

# Everything started, so that an interrupted run leaves no daemon behind.
_STARTED = []


def started(peer):
    """Register a `support.Process` or a `peers.ZrsdPrimary`."""
    _STARTED.append(peer)
    return peer


def write_replica_config(path, zeo_port, primary_port, fs_path, blob_dir):
    blob = '    blob-dir %s\n' % blob_dir if blob_dir else ''
    with open(path, 'w') as f:
        f.write(REPLICA_CONFIG % dict(zeo_port=zeo_port,
                                      primary_port=primary_port,
                                      fs_path=fs_path, blob=blob))


def read_exactly(sock, n):
    data = b''
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock):
    head = read_exactly(sock, 4)
    if head is None:
        return None
    return read_exactly(sock, struct.unpack('>I', head)[0])


class Epoch:
    """One replica process on fresh files, with its own case server port."""

    def __init__(self, lane, number):
        self.lane = lane
        self.directory = os.path.join(lane.directory, 'epoch-%d' % number)
        os.makedirs(self.directory)
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.zeo_port = support.free_port()
        self.fs_path = os.path.join(self.directory, 'replica.fs')
        self.blob_dir = (os.path.join(self.directory, 'blobs')
                         if lane.blobs else None)
        config = os.path.join(self.directory, 'replica.conf')
        write_replica_config(config, self.zeo_port, self.port, self.fs_path,
                             self.blob_dir)
        self.log_path = os.path.join(self.directory, 'replica.log')
        self.process = started(support.Process([ZRSD, '-C', config],
                                               self.log_path))
        self.log = LogTail(self.log_path)
        self.verified = 0       # source transactions checked over ZEO
        self.connections = 0
        self.sock = None
        self.position = 0

    def alive(self):
        return self.process.popen.poll() is None

    def accept(self):
        """The replica's next connection: (socket, protocol, start tid)."""
        deadline = time.monotonic() + IO_TIMEOUT
        self.listener.settimeout(0.2)
        while True:
            if not self.alive():
                raise self.lane.died(self)
            try:
                sock, _ = self.listener.accept()
                break
            except socket.timeout:
                if time.monotonic() > deadline:
                    raise self.lane.hung(self, 'the replica did not '
                                         'reconnect within %ss' % IO_TIMEOUT)
        sock.settimeout(IO_TIMEOUT)
        try:
            protocol = read_frame(sock)
            tid = read_frame(sock)
        except socket.timeout:
            protocol = tid = None
        if protocol is None or tid is None:
            sock.close()
            raise self.lane.hung(self, 'no handshake from the replica')
        self.connections += 1
        self.lane.summary.add('secondary', 'connections')
        return sock, protocol, tid

    def segment(self, number):
        """Log records of connection `number` (0-based), once complete."""
        def complete():
            self.log.poll()
            return len(self.log.connected) > number + 1
        support.wait_until(complete, IO_TIMEOUT, message='connection %d in '
                           '%s' % (number + 1, self.log_path))
        start, end = self.log.connected[number:number + 2]
        return self.log.records[start:end]


class ReplicaLane:
    """One zrsd replica (per epoch) fed one case per connection."""

    side = 'secondary'

    def __init__(self, source, generator, directory, summary, markers,
                 verbose=False, keep=False):
        self.source = source
        self.generator = generator
        self.keep = keep
        self.lane = generator.lane
        self.blobs = source.blob_dir is not None
        self.protocol = zrs.PROTOCOL_2_1 if self.blobs else zrs.PROTOCOL_2_0
        self.directory = directory
        self.summary = summary
        self.markers = markers
        self.verbose = verbose
        self.epochs = 0

    def say(self, text):
        if self.verbose:
            print('[%s] %s' % (self.lane, text), file=sys.stderr, flush=True)

    def died(self, epoch):
        epoch.log.poll()
        tail = '\n'.join(r.line[:300] for r in epoch.log.records[-15:])
        stopped = [r.message for r in epoch.log.records
                   if r.logger == 'zrsd' and 'stopping (' in r.message]
        outside = ' (it logged "%s": a signal from outside?)' % stopped[0] \
            if stopped else ''
        self.summary.violation('daemon crashes', self.side, 'the %s replica '
                               'exited with status %s%s; its log ends:\n%s'
                               % (self.lane, epoch.process.popen.returncode,
                                  outside, tail))
        return LaneAbort()

    def hung(self, epoch, text, case=None):
        self.summary.violation('hangs', self.side, '%s: %s' % (
            self.lane, text), case)
        return LaneAbort()

    def run(self, cases):
        epoch = None
        number = 0
        try:
            while number < cases:
                if epoch is None:
                    epoch = self.start_epoch()
                if len(self.source) - epoch.position < WINDOW_NEED:
                    self.end_epoch(epoch)
                    epoch = None
                    continue
                case = self.generator.case(number, epoch.position)
                number += 1
                self.summary.add(self.side, 'cases')
                self.summary.add(self.side, 'cases %s' % (
                    'blobs' if self.blobs else 'plain'))
                self.serve(epoch, case)
                sock, protocol, tid = epoch.accept()
                self.check(epoch, case, protocol, tid)
                epoch.sock = sock
                if self.verbose and number % 50 == 0:
                    self.say('%d cases, at source index %d' % (
                        number, epoch.position))
        except LaneAbort:
            pass
        finally:
            if epoch is not None:
                self.end_epoch(epoch)

    def start_epoch(self):
        self.epochs += 1
        self.summary.add(self.side, 'epochs')
        epoch = Epoch(self, self.epochs)
        self.say('epoch %d: replica on port %d' % (self.epochs,
                                                   epoch.zeo_port))
        try:
            sock, protocol, tid = epoch.accept()
        except LaneAbort:
            epoch.process.close()
            epoch.listener.close()
            raise
        epoch.sock = sock
        if tid != Z64 or protocol != self.protocol:
            self.summary.violation('streams', self.side, 'a new %s replica '
                                   'sent %r, %s' % (self.lane, protocol,
                                                    tid.hex()))
        return epoch

    def serve(self, epoch, case):
        """Send the case, close our side, wait until zrsd drops it."""
        sock = epoch.sock
        try:
            sock.sendall(case.wire)
        except socket.timeout:
            raise self.hung(epoch, 'the replica stopped reading', case)
        except OSError:
            pass   # it dropped the connection already
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        try:
            while sock.recv(65536):
                pass
        except socket.timeout:
            raise self.hung(epoch, 'the replica kept the connection open '
                            'after the stream ended', case)
        except OSError:
            pass
        finally:
            sock.close()

    def check(self, epoch, case, protocol, tid):
        summary, side = self.summary, self.side
        if protocol != self.protocol:
            summary.violation('streams', side, 'handshake with %r' % (
                protocol,), case)
        position = self.source.index.get(tid)
        expected = case.start + case.commits
        if position is None:
            summary.violation('partial/unchecked transactions', side,
                              'the replica resumes after %s, which is not '
                              'in the source' % tid.hex(), case)
            raise LaneAbort()
        judge_position(summary, side, case, position, expected)
        summary.add(side, 'commits', max(0, position - epoch.position))
        epoch.position = position
        self.check_zeo(epoch, case, tid)
        check_markers(summary, side, self.markers, case)
        if self.blobs:
            check_blob_temp(summary, side, epoch.blob_dir, case)
        self.check_log(epoch, case, epoch.connections - 2)

    def check_zeo(self, epoch, case, tid):
        """A fresh read-only ZEO client answers, its last transaction is the
        handshake's, and it serves the records committed since the last
        check; those transactions, read from the file (the replica is idle
        while it waits for our first frame), are the source's."""
        summary, side = self.summary, self.side
        new = self.source.txns[epoch.verified:epoch.position]
        try:
            client = ZEO.client(('127.0.0.1', epoch.zeo_port),
                                read_only=True, wait_timeout=IO_TIMEOUT)
        except Exception as exc:
            if not epoch.alive():
                raise self.died(epoch)
            raise self.hung(epoch, 'ZEO does not answer: %s: %s' % (
                type(exc).__name__, exc), case)
        try:
            last = client.lastTransaction()
            if last != tid:
                summary.violation('partial/unchecked transactions', side,
                                  'ZEO says the last transaction is %s, '
                                  'the handshake %s' % (last.hex(),
                                                        tid.hex()), case)
            for txn in new:
                for r in txn.records:
                    if r.data is None:
                        continue
                    data = client.loadSerial(r.oid, r.tid)
                    if data != r.data:
                        summary.violation(
                            'partial/unchecked transactions', side,
                            'ZEO serves other data for %s at %s' % (
                                r.oid.hex(), r.tid.hex()), case)
        finally:
            client.close()
        if new:
            iterator = ZODB.FileStorage.FileIterator(epoch.fs_path,
                                                     new[0].tid)
            try:
                got = [comparable(t) for t in iterator]
            finally:
                iterator.close()
            if compare_history(summary, side, case, self.source,
                               epoch.verified, got) and len(got) != len(new):
                summary.violation('partial/unchecked transactions', side,
                                  'the file has %d new transactions, the '
                                  'handshake says %d' % (len(got), len(new)),
                                  case)
        epoch.verified = epoch.position

    def check_log(self, epoch, case, number):
        """Connection `number` ended in exactly one line: one ERROR or one
        INFO `disconnected`; nothing else alarming."""
        summary, side = self.summary, self.side
        records = epoch.segment(number)
        errors = [r for r in records if r.is_error]
        ours = [r for r in errors if r.logger == 'zrsd.client']
        ended = [r for r in records if r.logger == 'zrsd.client'
                 and ': disconnected' in r.message]
        # zrsd logs a repeated apply failure at DEBUG (rate limiting): the
        # replicas run at DEBUG, so that we see those too.
        repeats = [r for r in records if r.logger == 'zrsd.client'
                   and r.level == 'DEBUG' and r.message.endswith(
                       'open transaction aborted, reconnecting')]
        for record in repeats:
            if not any(r.is_error and r.message == record.message
                       for r in epoch.log.records):
                summary.violation('log', side, 'a rejection logged at DEBUG'
                                  ' only: %s' % record.line[:300], case)
        ours += repeats
        if len(ours) + len(ended) != 1:
            summary.violation('log', side, 'the connection ended with %d '
                              'rejection and %d "disconnected" lines: %s' % (
                                  len(ours), len(ended), ' | '.join(
                                      r.line[:200] for r in ours + ended)),
                              case)
        if not ours:
            judge(summary, side, case, None)
            return
        record = ours[0]
        if traceback_from_protocol(record.extra):
            summary.violation('log', side, 'the protocol module raised a '
                              'non-protocol error: %s' % record.message[:300],
                              case)
        text = record.message
        judge(summary, side, case, text, record.line)

    def end_epoch(self, epoch):
        """SIGTERM the replica, then compare its file with the source."""
        summary, side = self.summary, self.side
        alive = epoch.alive()
        status = epoch.process.stop(IO_TIMEOUT) if alive else None
        epoch.process.close()
        if epoch.sock is not None:
            epoch.sock.close()
        epoch.listener.close()
        if alive and status != 0:
            summary.violation('daemon crashes', side, 'the %s replica exited '
                              'with status %s on SIGTERM' % (self.lane,
                                                            status))
        epoch.log.poll()
        for record in epoch.log.records:
            if record.level == 'CRITICAL':
                summary.violation('daemon crashes', side, 'CRITICAL: %s'
                                  % record.line[:500])
        if epoch.log.connected:
            for record in epoch.log.records[epoch.log.connected[-1]:]:
                if record.is_error:
                    summary.violation('log', side, 'ERROR while stopping: '
                                      '%s' % record.line[:300])
        if alive:
            before = len(summary.violations)
            check_file(summary, side, self.source, epoch.fs_path,
                       epoch.blob_dir, epoch.position)
            if len(summary.violations) == before and not self.keep:
                shutil.rmtree(epoch.directory, ignore_errors=True)
        self.say('epoch %d ended at source index %d' % (
            self.epochs, epoch.position))


# ---------------------------------------------------------------------------
# The primary side.

def expect_from_primary(data, tids):
    """What a zrsd primary (without blobs) does with `data` from a new
    secondary, if the secondary then waits; `tids` are the primary's
    transactions (it is never packed here).

    Returns ('refuse', reasons), ('stream', start_tid) or ('incomplete',
    None); `reasons` is a tuple of texts, one of which the ERROR names.
    The rules: frames of at most 64 bytes; a protocol name; an 8-byte tid
    that is zero or one of `tids` (the history guard); then only empty
    frames.  The history guard runs in the primary's streamer thread, so a
    violation that follows a refused tid may be the one named instead.
    """
    pos, phase, start, forked = 0, 'protocol', None, ()
    while len(data) - pos >= 4:
        (n,) = struct.unpack_from('>I', data, pos)
        if n > 64:
            return 'refuse', forked + ('frame of %d bytes is too large' % n,)
        if len(data) - pos - 4 < n:
            break
        payload = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        if phase == 'protocol':
            if payload not in zrs.PROTOCOLS:
                return 'refuse', ('unknown protocol',)
            phase = 'tid'
        elif phase == 'tid':
            if len(payload) != 8:
                return 'refuse', ('start tid of %d bytes' % len(payload),)
            if payload != Z64 and payload not in tids:
                forked = ('its last transaction %s is not in this storage'
                          % payload.hex(),)
            phase, start = 'stream', payload
        elif payload:
            return 'refuse', forked + (
                'unexpected %d-byte message after the handshake'
                % len(payload),)
    if forked:
        return 'refuse', forked
    if phase == 'stream':
        return 'stream', start
    return 'incomplete', None


def frame(payload):
    return struct.pack('>I', len(payload)) + payload


class RawSecondary:
    """A raw socket to the primary's replication port."""

    def __init__(self, side):
        self.side = side
        self.sock = socket.create_connection(
            ('127.0.0.1', side.primary.repl_port), timeout=IO_TIMEOUT)
        self.port = self.sock.getsockname()[1]
        side.log.poll()
        self.first = len(side.log.ports[self.port])
        side.ports.add(self.port)
        side.summary.add('primary', 'connections')
        self.buffer = b''

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def wait_closed(self):
        """Read until the primary closes; False if it does not."""
        try:
            while self.sock.recv(1 << 16):
                pass
        except socket.timeout:
            return False
        except OSError:
            pass
        return True

    def close(self, reset=False):
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack('ii', 1, 0))
        self.sock.close()

    def records(self):
        self.side.log.poll()
        return self.side.log.ports[self.port][self.first:]

    def next_frame(self):
        while True:
            if len(self.buffer) >= 4:
                (n,) = struct.unpack_from('>I', self.buffer)
                if len(self.buffer) >= 4 + n:
                    payload = self.buffer[4:4 + n]
                    self.buffer = self.buffer[4 + n:]
                    return payload
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError('the primary closed the connection')
            self.buffer += chunk


PRIMARY_KINDS = [
    'random-bytes', 'random-bytes', 'random-frames', 'random-frames',
    'random-tid', 'random-tid', 'random-tid', 'junk-after-handshake',
    'junk-after-handshake', 'keepalives-partial', 'oversized-first',
    'half-close', 'reset-mid-stream', 'storm']


class PrimarySide:
    """A zrsd primary, a legit zrsd replica, and hostile secondaries."""

    side = 'primary'

    def __init__(self, directory, seed, cases, summary, verbose=False,
                 keep=False):
        self.directory = directory
        self.keep = keep
        self.seed = seed
        self.cases = cases
        self.summary = summary
        self.verbose = verbose
        self.ports = set()
        self.primary = self.replica = self.client = self.log = None
        self.commits = 0
        self.slow = []   # (batch, RawSecondary) of slow-loris connections

    def say(self, text):
        if self.verbose:
            print('[primary] %s' % text, file=sys.stderr, flush=True)

    def violation(self, category, text):
        self.summary.violation(category, self.side, text)

    def run(self):
        try:
            self.setup()
            for batch in range(0, self.cases, PRIMARY_BATCH):
                self.batch(batch // PRIMARY_BATCH, range(
                    batch, min(self.cases, batch + PRIMARY_BATCH)))
            self.collect_slow(self.cases)
        except LaneAbort:
            pass
        except Exception:
            self.violation('setup', traceback.format_exc()[-2000:])
        finally:
            self.teardown()

    def setup(self):
        self.primary = started(peers.ZrsdPrimary(
            os.path.join(self.directory, 'primary'),
            handshake_timeout=HANDSHAKE_TIMEOUT))
        self.primary.start()
        zczrs.populate(self.primary.zeo_address, transactions=30,
                       undo_every=12)
        zeo_port = support.free_port()
        self.replica_fs = os.path.join(self.directory, 'replica.fs')
        config = os.path.join(self.directory, 'replica.conf')
        write_replica_config(config, zeo_port, self.primary.repl_port,
                             self.replica_fs, None)
        self.replica = started(support.Process(
            [ZRSD, '-C', config], os.path.join(self.directory,
                                               'replica.log')))
        self.client = ZEO.client(('127.0.0.1', zeo_port), read_only=True,
                                 wait_timeout=IO_TIMEOUT)
        self.history, self.tids = {}, []
        self.load_history()
        peers.wait_for_tid(self.client, self.tids[-1],
                           [self.primary, self.replica], IO_TIMEOUT)
        self.log = LogTail(self.primary.log_path)
        self.replica_log = LogTail(self.replica.log_path)
        self.say('primary with %d transactions, replica following' % len(
            self.tids))

    def teardown(self):
        if self.client is not None:
            self.client.close()
        statuses = {}
        for name, proc in (('replica', self.replica),
                           ('primary', self.primary)):
            if proc is None:
                continue
            running = (proc.popen.poll() is None if name == 'replica'
                       else proc.running())
            if running:
                statuses[name] = proc.stop(IO_TIMEOUT)
                if statuses[name] != 0:
                    self.violation('daemon crashes', 'the %s exited with '
                                   'status %s on SIGTERM' % (
                                       name, statuses[name]))
            proc.close()
        if self.log is None:
            return
        self.log.poll()
        for record in self.log.records:
            port = PORT.search(record.message)
            if record.level == 'CRITICAL':
                self.violation('daemon crashes', 'CRITICAL: %s'
                               % record.line[:500])
            elif record.is_error and (
                    port is None or int(port.group(1)) not in self.ports):
                self.violation('log', 'ERROR about no hostile connection: '
                               '%s' % record.line[:500])
        if statuses.get('replica') == 0 and statuses.get('primary') == 0:
            primary = support.transactions(self.primary.fs_path)
            replica = support.transactions(self.replica_fs)
            if primary != replica:
                self.violation('partial/unchecked transactions',
                               'the replica file (%d transactions) differs '
                               'from the primary file (%d)' % (
                                   len(replica), len(primary)))
            elif self.summary.clean and not self.keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    # -- batches -----------------------------------------------------------

    def batch(self, number, cases):
        """Some cases, slow-loris connections on the side, then a commit
        that the legit replica must receive."""
        rng = random.Random('%s/primary/batch/%d' % (self.seed, number))
        self.summary.add(self.side, 'batches')
        for _ in range(rng.choice([0, 1, 1, 2])):
            conn = RawSecondary(self)
            conn.send(rng.choice([
                b'', b'\0', b'\0\0\0\x06zr', frame(b'zrs2.0'),
                frame(b'zrs2.0') + b'\0\0\0\x08\0\0']))
            self.slow.append((number, conn))
        # One more dribbles a 64-byte frame, a byte per case, never
        # completing it: the handshake timeout must still drop it.
        dribbler = RawSecondary(self)
        dribbler.send(struct.pack('>I', 64))
        dribbler.dribbled = 0
        self.slow.append((number, dribbler))
        for case in cases:
            for _, conn in self.slow:
                if getattr(conn, 'dribbled', 63) < 63:
                    conn.dribbled += 1
                    conn.send(b'z')
            self.case(case)
        self.collect_slow(number - SLOW_LORIS_AGE)
        self.follow()

    def collect_slow(self, up_to):
        """Each slow-loris connection opened in batch `up_to` or before must
        be dropped with one ERROR.  (Collected a few batches later, so that
        nobody waits for the handshake timeout.)"""
        keep = []
        for opened, conn in self.slow:
            if opened > up_to:
                keep.append((opened, conn))
                continue
            if not conn.wait_closed():
                self.violation('hangs', 'a secondary that never completed '
                               'its handshake was not dropped')
                raise LaneAbort()
            conn.close()
            self.judge(conn, 'refuse', ('no handshake within',),
                       'slow-loris')
        self.slow = keep

    def follow(self):
        """Primary alive, a new commit reaches the replica, which is still
        on its first connection."""
        if not self.primary.running():
            self.primary.process.close()
            self.violation('daemon crashes', 'the primary exited with %s' %
                           self.primary.process.popen.returncode)
            raise LaneAbort()
        self.commits += 1
        tid = zczrs.commit_change(self.primary.zeo_address,
                                  'fuzz-%d' % self.commits, self.commits)
        self.load_history()
        try:
            peers.wait_for_tid(self.client, tid,
                               [self.primary, self.replica], IO_TIMEOUT)
        except AssertionError as exc:
            self.violation('replica following', str(exc)[:1000])
            raise LaneAbort()
        self.summary.add(self.side, 'followed')
        self.replica_log.poll()
        records = self.replica_log.records
        connected = [r for r in records if ': connected (' in r.message]
        dropped = [r for r in records if ': disconnected' in r.message
                   or r.is_error]
        if len(connected) != 1 or dropped:
            self.violation('replica following', 'the legit replica lost '
                           'its connection: %s' % ' | '.join(
                               r.line[:200] for r in dropped + connected))
            raise LaneAbort()

    # -- cases ---------------------------------------------------------------

    def case(self, number):
        rng = random.Random('%s/primary/%d' % (self.seed, number))
        kind = rng.choice(PRIMARY_KINDS)
        self.summary.add(self.side, 'cases')
        getattr(self, 'case_' + kind.replace('-', '_'))(rng, kind)

    def some_tid(self, rng, valid=None):
        """A start tid: random bytes, or one at or below the last."""
        last = self.tids[-1]
        if valid is None:
            valid = rng.random() < 0.5
        if not valid:
            return rng.randbytes(8)
        return rng.choice([
            Z64, last, rng.choice(self.tids), _tid_minus(rng.choice(
                self.tids)), rng.randint(0, int.from_bytes(
                    last, 'big')).to_bytes(8, 'big')])

    def single(self, data, kind, verify=False, reset=False):
        expect, info = expect_from_primary(data, self.history)
        conn = RawSecondary(self)
        conn.send(data)
        if expect == 'refuse':
            if not conn.wait_closed():
                self.violation('hangs', '%s: the primary kept a connection '
                               'it should refuse (%s)' % (kind, info))
                raise LaneAbort()
        elif expect == 'stream' and verify:
            self.verify_stream(conn, info, kind)
        conn.close(reset)
        self.judge(conn, expect, info if expect == 'refuse' else None, kind)

    def load_history(self):
        """Read the primary's new transactions from its file (it is idle:
        this side commits only between batches)."""
        start = self.tids[-1] if self.history else None
        iterator = ZODB.FileStorage.FileIterator(self.primary.fs_path, start)
        try:
            for t in iterator:
                if t.tid not in self.history:
                    self.history[t.tid] = comparable(t)
        finally:
            iterator.close()
        self.tids = sorted(self.history)

    def verify_stream(self, conn, start, kind):
        """The primary streams exactly its transactions after `start`, each
        as in its file, each with a correct checksum."""
        following = [t for t in self.tids if t > start]
        if not following:
            self.wait_log(conn, 'streaming transactions after %s'
                          % start.hex())
            return
        md5 = hashlib.md5(start)
        decoder = zrs.MessageDecoder()

        def payload():
            data = conn.next_frame()
            md5.update(data)
            return data

        try:
            for tid in following:
                begin = decoder.decode(payload())
                if not isinstance(begin, zrs.Begin) or begin.tid != tid:
                    raise zrs.ProtocolError('got %r where T %s was due' % (
                        begin, tid.hex()))
                records = []
                while True:
                    digest = md5.digest()
                    message_ = decoder.decode(payload())
                    if isinstance(message_, zrs.Commit):
                        break
                    if not isinstance(message_, zrs.Store) or \
                            message_.inline:
                        raise zrs.ProtocolError('got %r in %s' % (
                            message_, tid.hex()))
                    records.append((message_.oid, message_.tid,
                                    payload() or None, message_.data_txn))
                if message_.checksum != digest:
                    raise zrs.ProtocolError('bad checksum at %s' % tid.hex())
                got = (begin.tid, begin.status, begin.user,
                       begin.description, begin.extension, records)
                if got != self.history[tid]:
                    raise zrs.ProtocolError('transaction %s differs from the'
                                            ' file' % tid.hex())
            self.summary.add(self.side, 'streams verified')
            self.summary.add(self.side, 'transactions verified',
                             len(following))
        except (OSError, EOFError, zrs.ProtocolError) as exc:
            self.violation('streams', '%s: streaming after %s: %s' % (
                kind, start.hex(), exc))

    def wait_log(self, conn, text):
        try:
            support.wait_until(
                lambda: any(text in r.message for r in conn.records()),
                IO_TIMEOUT, message=text)
        except AssertionError as exc:
            self.violation('hangs', str(exc))
            raise LaneAbort()

    def judge(self, conn, expect, reason, kind):
        """One connection's log: it ended, with one ERROR naming `reason`
        if refused, none otherwise.

        `expect` is 'refuse' (`reason`: a tuple of texts, one of which the
        ERROR names), 'stream' (a complete handshake), 'incomplete' (we
        closed mid-handshake: if the handshake timeout fired before our
        close arrived, one ERROR saying so is right too) or
        'refuse-or-not' (we closed before the primary's history guard
        decided: one ERROR naming `reason`, or none).
        """
        self.wait_log(conn, ': disconnected')
        records = conn.records()
        errors = [r for r in records if r.is_error]
        if expect == 'refuse-or-not':
            expect = 'refuse' if errors else 'stream'
        if expect == 'refuse' and not errors:
            # The same history refused again from this host within a few
            # minutes is an INFO line (see zrsd.server).
            errors = [r for r in records
                      if 'secondary refused again' in r.message]
        for record in errors:
            if len(record.line) > MAX_ERROR_LINE:
                self.violation('log', '%s: ERROR line of %d characters'
                               % (kind, len(record.line)))
        if expect == 'incomplete' and len(errors) == 1 and \
                'no handshake within' in errors[0].message:
            expect, reason = 'refuse', ('no handshake within',)
        if expect == 'refuse':
            if len(errors) != 1 or not any(
                    text in errors[0].message for text in reason):
                self.violation('log', '%s: expected one ERROR naming one of '
                               '%r, got: %s' % (kind, reason, ' | '.join(
                                   r.line[:300] for r in errors) or 'none'))
            else:
                self.summary.add(self.side, 'refused')
                self.summary.reason(self.side, errors[0].message)
        else:
            self.summary.add(self.side, 'not refused')
            if errors:
                self.violation('log', '%s: ERROR for a connection that '
                               'broke no rule: %s' % (kind, ' | '.join(
                                   r.line[:300] for r in errors)))

    def case_random_bytes(self, rng, kind):
        data = rng.randbytes(rng.randint(1, 120))
        if rng.random() < 0.5:
            data = b'\0\0\0' + bytes([rng.randint(0, 70)]) + data
        self.single(data, kind)

    def case_random_frames(self, rng, kind):
        data = b''
        for _ in range(rng.randint(1, 5)):
            data += frame(rng.choice([
                b'zrs2.0', b'zrs2.1', b'zrs2.0\0', b'ZRS2.0', b'',
                rng.randbytes(8), self.some_tid(rng),
                rng.randbytes(rng.randint(0, 80))]))
        self.single(data, kind, verify=True)

    def case_random_tid(self, rng, kind):
        data = frame(rng.choice(zrs.PROTOCOLS)) + frame(self.some_tid(rng))
        data += frame(b'') * rng.choice([0, 0, 1, 3])
        self.single(data, kind, verify=True)

    def case_junk_after_handshake(self, rng, kind):
        data = frame(rng.choice(zrs.PROTOCOLS)) + frame(
            self.some_tid(rng, valid=True))
        data += frame(b'') * rng.randint(0, 3)
        if rng.random() < 0.8:
            data += frame(rng.randbytes(rng.randint(1, 64)))
        else:
            data += struct.pack('>I', rng.randint(65, (1 << 32) - 1))
        self.single(data, kind)

    def case_keepalives_partial(self, rng, kind):
        data = frame(rng.choice(zrs.PROTOCOLS)) + frame(
            self.some_tid(rng, valid=True))
        data += frame(b'') * rng.randint(0, 5)
        data += rng.choice([b'\0', b'\0\0\0', b'\0\0\0\x05ab'])
        self.single(data, kind, verify=True, reset=rng.random() < 0.5)

    def case_oversized_first(self, rng, kind):
        self.single(struct.pack('>I', rng.randint(65, (1 << 32) - 1))
                    + rng.randbytes(rng.randint(0, 50)), kind)

    def case_half_close(self, rng, kind):
        data = frame(rng.choice(zrs.PROTOCOLS))
        if rng.random() < 0.7:
            data += frame(self.some_tid(rng, valid=True))
        conn = RawSecondary(self)
        conn.send(data)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        if not conn.wait_closed():
            self.violation('hangs', '%s: the primary kept a half-closed '
                           'connection' % kind)
            raise LaneAbort()
        conn.close()
        expect, reasons = expect_from_primary(data, self.history)
        if expect == 'refuse':
            # Our close may reach the primary before its history guard
            # has decided: then it just disconnects.
            expect = 'refuse-or-not'
        self.judge(conn, expect, reasons, kind)

    def case_reset_mid_stream(self, rng, kind):
        conn = RawSecondary(self)
        conn.send(frame(b'zrs2.0') + frame(Z64))
        with contextlib.suppress(OSError, EOFError):
            for _ in range(rng.randint(1, 20)):
                conn.next_frame()
        conn.close(reset=True)
        self.judge(conn, 'stream', None, kind)

    def case_storm(self, rng, kind):
        actions = ['close', 'reset', 'partial', 'partial-reset',
                   'handshake', 'handshake-reset', 'refuse']
        conns = [(RawSecondary(self), rng.choice(actions))
                 for _ in range(rng.randint(5, 40))]
        sent = {}
        for conn, action in conns:
            if action.startswith('partial'):
                conn.send(frame(b'zrs2.0')[:rng.randint(1, 9)])
            elif action.startswith('handshake'):
                sent[conn] = frame(b'zrs2.0') + frame(
                    self.some_tid(rng, valid=True))
                conn.send(sent[conn])
            elif action == 'refuse':
                conn.send(frame(b'zrs9.9'))
        for conn, action in conns:
            if action == 'refuse' and not conn.wait_closed():
                self.violation('hangs', 'storm: a refused connection was '
                               'kept')
                raise LaneAbort()
            conn.close(reset=action.endswith('reset'))
        for conn, action in conns:
            if action == 'refuse':
                self.judge(conn, 'refuse', ('unknown protocol',), kind)
            elif action.startswith('handshake'):
                # A tid outside the history: refused, unless our close
                # came first.
                expect, reasons = expect_from_primary(sent[conn],
                                                      self.history)
                self.judge(conn, 'refuse-or-not' if expect == 'refuse'
                           else 'stream', reasons, kind)
            else:
                self.judge(conn, 'incomplete', None, kind)


# ---------------------------------------------------------------------------
# Running.

def source_size(cases_per_lane):
    return max(40, min(300, 2 * cases_per_lane + 20))


def tmpfs_directory(parent):
    """A directory on tmpfs if there is one (the in-process layer commits
    thousands of transactions; fsync there costs nothing), else `parent`."""
    if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK):
        return tempfile.mkdtemp(prefix='zrsd-fuzz-', dir='/dev/shm')
    return tempfile.mkdtemp(prefix='in-process-', dir=parent)


def run(cases, seed, sides=('secondary', 'primary'), in_process_cases=0,
        workdir=None, verbose=False, check_checksums=True, keep=False):
    """Run the fuzzer; returns a `Summary`.

    `cases` per side (the secondary side splits them over its two lanes);
    `in_process_cases` per in-process lane source (plain and blobs).
    `check_checksums=False` breaks the in-process receiver on purpose (to
    show that the oracle notices).  `keep` keeps every process's files
    (they are removed when clean otherwise).
    """
    own_workdir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix='zrsd-fuzz-')
    os.makedirs(workdir, exist_ok=True)
    summary = Summary(workdir, seed, cases)
    markers = os.path.join(workdir, 'markers')
    os.makedirs(markers, exist_ok=True)
    armed, duds = arm_check(os.path.join(workdir, 'controls'))
    summary.notes.append('hostile pickles: %d, of which %d armed (each '
                         'created its marker under plain pickle.loads)'
                         % (len(HOSTILES), armed))
    for name in duds:
        summary.violation('setup', 'fuzzer', 'hostile pickle %s does not '
                          'fire under pickle.loads' % name)
    sources = {}
    if 'secondary' in sides or in_process_cases:
        size = source_size(max(cases // 2, in_process_cases // 20))
        for name, blobs in (('plain', False), ('blobs', True)):
            sources[name] = build_source(os.path.join(workdir, 'sources'),
                                         name, size, blobs)
    threads = []

    def timed(side, target, *args):
        def body():
            started = time.monotonic()
            try:
                target(*args)
            except Exception:
                summary.violation('setup', side, traceback.format_exc())
            finally:
                with summary.lock:
                    summary.seconds[side] = max(
                        summary.seconds[side], time.monotonic() - started)
        return threading.Thread(target=body, name='fuzz-' + side,
                                daemon=True)

    if 'secondary' in sides and cases:
        per_lane = {'plain': (cases + 1) // 2, 'blobs': cases // 2}
        for name, source in sources.items():
            generator = CaseGenerator(source, name, seed, markers,
                                      source.blob_dir is not None)
            lane = ReplicaLane(source, generator, os.path.join(
                workdir, 'secondary-' + name), summary, markers, verbose,
                keep)
            os.makedirs(lane.directory, exist_ok=True)
            threads.append(timed('secondary', lane.run, per_lane[name]))
    if 'primary' in sides and cases:
        side = PrimarySide(os.path.join(workdir, 'primary'), seed, cases,
                           summary, verbose, keep)
        threads.append(timed('primary', side.run))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for peer in _STARTED:
            peer.close()   # kills what is still running
        del _STARTED[:]
    if in_process_cases:
        directory = tmpfs_directory(workdir)
        started = time.monotonic()
        try:
            for name, source in sources.items():
                generator = CaseGenerator(source, 'in-process-' + name, seed,
                                          markers,
                                          source.blob_dir is not None)
                lane = InProcessLane(source, generator, directory, summary,
                                     markers, check_checksums)
                try:
                    lane.run(in_process_cases)
                except LaneAbort:
                    pass
        finally:
            summary.seconds['in-process'] = time.monotonic() - started
            shutil.rmtree(directory, ignore_errors=True)
    summary.elapsed = time.monotonic() - summary.started
    if not summary.clean:
        with open(os.path.join(workdir, 'violations.txt'), 'w') as f:
            f.write(summary.report(details=len(summary.violations)) + '\n')
    if summary.clean and own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Fuzz the ZRS protocol against real zrsd processes.')
    parser.add_argument('--cases', type=int, default=100,
                        help='cases per side (default 100)')
    parser.add_argument('--seed', default='1', help='random seed')
    parser.add_argument('--side', default='both',
                        choices=['secondary', 'primary', 'both', 'none'],
                        help='which process side(s) to fuzz')
    parser.add_argument('--in-process', action='store_true',
                        help='also run the in-process layer')
    parser.add_argument('--in-process-cases', type=int, default=None,
                        help='in-process cases per source (default: '
                        '10 x --cases, at least 1000)')
    parser.add_argument('--workdir', help='work here (default: a new '
                        'temporary directory, removed when clean)')
    parser.add_argument('--keep', action='store_true',
                        help="keep the processes' files even when clean")
    parser.add_argument('-v', '--verbose', action='store_true')
    args = parser.parse_args(argv)
    sides = {'both': ('secondary', 'primary'), 'none': ()}.get(
        args.side, (args.side,))
    in_process = 0
    if args.in_process:
        in_process = args.in_process_cases
        if in_process is None:
            in_process = max(1000, 10 * args.cases)
    summary = run(args.cases, args.seed, sides, in_process, args.workdir,
                  args.verbose, keep=args.keep)
    print(summary.report())
    return 0 if summary.clean else 1


if __name__ == '__main__':
    sys.exit(main())
