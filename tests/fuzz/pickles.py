"""Hand-made pickles: opcodes for hostile or malformed messages, and the
hostile pickles themselves, each of which would create a marker file if an
unrestricted unpickler loaded it."""
import os
import pickle
import shutil
import struct


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


def touch(marker):
    """The shell command that creates `marker`."""
    return 'touch %s' % marker


def _open_code(marker):
    """Python code that creates `marker`."""
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


def _popen_args(marker):
    return LST(U('touch'), U(marker))


def _hostiles():
    import subprocess
    items = [
        Hostile('os.system', 'refused global os.system',
                lambda m: CALL(G('os', 'system'), U(touch(m)))),
        Hostile('posix.system', 'refused global posix.system',
                lambda m: CALL(G('posix', 'system'), U(touch(m)))),
        Hostile('subprocess.Popen', 'refused global subprocess.Popen',
                lambda m: CALL(G('subprocess', 'Popen'), _popen_args(m))),
        Hostile('subprocess.call', 'refused global subprocess.call',
                lambda m: CALL(G('subprocess', 'call'), _popen_args(m))),
        Hostile('subprocess.getoutput', 'refused global subprocess.getoutput',
                lambda m: CALL(G('subprocess', 'getoutput'), U(touch(m)))),
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
                               U(touch(m)))),
        Hostile('__import__', 'refused global builtins.__import__',
                lambda m: CALL(CALL(G('builtins', '__import__'), U('os'))
                               + b'0' + G('os', 'system'), U(touch(m)))),
        Hostile('copyreg._reconstructor',
                'refused global copyreg._reconstructor',
                lambda m: CALL(G('copyreg', '_reconstructor'),
                               G('subprocess', 'Popen'),
                               G('subprocess', 'Popen'), _popen_args(m))),
        Hostile('copy_reg._reconstructor',
                'refused global copy_reg._reconstructor',
                lambda m: CALL(G('copy_reg', '_reconstructor'),
                               G('subprocess', 'Popen'),
                               G('subprocess', 'Popen'), _popen_args(m))),
        Hostile('OBJ-Popen', 'refused global subprocess.Popen',
                lambda m: b'(' + G('subprocess', 'Popen') + _popen_args(m)
                + b'o'),
        Hostile('INST-Popen', 'refused global subprocess.Popen',
                lambda m: b'(' + _popen_args(m) + b'isubprocess\nPopen\n'),
        Hostile('STACK_GLOBAL-system', 'refused global os.system',
                lambda m: CALL(SG('os', 'system'), U(touch(m)))),
        Hostile('NEWOBJ-Popen', 'refused global subprocess.Popen',
                lambda m: G('subprocess', 'Popen') + TUP(_popen_args(m))
                + b'\x81', armed=False),
        Hostile('reduce-os.system-p0', 'refused global posix.system',
                top=_real(os.system, lambda m: (touch(m),), 0)),
        Hostile('reduce-os.system-p1', 'refused global posix.system',
                top=_real(os.system, lambda m: (touch(m),), 1)),
        # (Protocol 2 pickles name builtins the Python 2 way.)
        Hostile('reduce-eval-p2', 'refused global __builtin__.eval',
                top=_real(eval, lambda m: (
                    '__import__("os").system(%r)' % touch(m),), 2)),
        Hostile('reduce-Popen-p4', 'refused global subprocess.Popen',
                top=_real(subprocess.Popen, lambda m: (['touch', m],), 4)),
        Hostile('reduce-getattr-p5', 'refused global builtins.getattr',
                top=lambda m: pickle.dumps(_Reduce(_Reduce(getattr, (
                    _Reduce(__import__, ('os',)), 'system')),
                    (touch(m),)), 5)),
        Hostile('PERSID', 'refused persistent id',
                lambda m: b'P' + touch(m).encode() + b'\n', armed=False),
        Hostile('BINPERSID', 'refused persistent id',
                lambda m: U(touch(m)) + b'Q', armed=False),
        Hostile('EXT1', 'undecodable', lambda m: b'\x82\x01', armed=False),
        Hostile('EXT4', 'undecodable',
                lambda m: b'\x84\xff\xff\xff\x7f', armed=False),
        Hostile('codecs-rot13', 'refused _codecs.encode',
                lambda m: CALL(G('_codecs', 'encode'), U(m), U('rot13')),
                armed=False),
        Hostile('codecs-base64', 'refused _codecs.encode',
                lambda m: CALL(G('_codecs', 'encode'), BY(b'x'),
                               U('base64')), armed=False),
        # bytes() with arguments allocates from a tiny message (2 GB from
        # a few bytes) or reaches other codecs: only bytes() is allowed.
        Hostile('bytes-2**40', 'refused bytes() with arguments',
                lambda m: CALL(G('builtins', 'bytes'), LONG(2 ** 40)),
                armed=False),
        Hostile('bytes-2**27', 'refused bytes() with arguments',
                lambda m: CALL(G('builtins', 'bytes'), LONG(2 ** 27)),
                armed=False),
        Hostile('bytes-str-codec', 'refused bytes() with arguments',
                lambda m: CALL(G('builtins', 'bytes'), U(m), U('utf-16')),
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
