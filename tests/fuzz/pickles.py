"""Hand-made pickles: opcodes for hostile or malformed messages, and the
hostile pickles, each of which creates a marker file if an unrestricted
unpickler loads it."""
import os
import pickle
import shutil
import struct
import subprocess


def U(text):
    """BINUNICODE: push a str."""
    data = text.encode('utf-8', 'surrogatepass')
    return b'X' + struct.pack('<I', len(data)) + data


def BY(data):
    """BINBYTES: push bytes (protocol 3; needs no global)."""
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
    """Pickle `message` (protocol 1) with `fragment`, which must push one
    object, in place of the one PLACEHOLDER string it contains."""
    clean = pickle.dumps(message, 1)
    marker = U(PLACEHOLDER)
    assert clean.count(marker) == 1, message
    return clean.replace(marker, fragment)


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


class Hostile:
    """One hostile pickle: `build(marker)` returns opcodes that push one
    object, or `top(marker)` a whole pickle (the real pickler's output,
    which cannot be embedded).  `reason`: a substring of zrsd's rejection
    (or None); `armed`: it executes under plain pickle.loads."""

    def __init__(self, name, reason, build=None, top=None, armed=True):
        self.name, self.reason, self.armed = name, reason, armed
        self.build, self._top = build, top

    def top(self, marker):
        return self._top(marker) if self._top else self.build(marker) + b'.'


def _popen(m):
    return LST(U('touch'), U(m))


_ARGS = {   # the arguments of a called global, for a marker
    'touch': lambda m: (U(touch(m)),), 'popen': lambda m: (_popen(m),),
    'code': lambda m: (U('open(%r, "w").close()' % m),),
    'open': lambda m: (U(m), U('w'))}


def _called(module, name, args):
    return Hostile('%s.%s' % (module, name), 'refused global %s.%s' % (
        module, name), lambda m: CALL(G(module, name), *_ARGS[args](m)))


def _real(name, reason, func, args_of, protocol):
    return Hostile(name, reason, top=lambda m: pickle.dumps(
        _Reduce(func, args_of(m)), protocol))


def _refused(name, reason, build):
    return Hostile(name, reason, build, armed=False)


HOSTILES = [_called(*call) for call in (
    ('os', 'system', 'touch'), ('posix', 'system', 'touch'),
    ('subprocess', 'Popen', 'popen'), ('subprocess', 'call', 'popen'),
    ('subprocess', 'getoutput', 'touch'), ('builtins', 'eval', 'code'),
    ('builtins', 'exec', 'code'), ('__builtin__', 'eval', 'code'),
    ('builtins', 'open', 'open'), ('io', 'open', 'open'))] + [
    Hostile('getattr-import', 'refused global builtins.getattr',
            lambda m: CALL(CALL(G('builtins', 'getattr'), CALL(
                G('builtins', '__import__'), U('os')), U('system')),
                U(touch(m)))),
    Hostile('__import__', 'refused global builtins.__import__',
            lambda m: CALL(CALL(G('builtins', '__import__'), U('os'))
                           + b'0' + G('os', 'system'), U(touch(m))))] + [
    Hostile(module + '._reconstructor',
            'refused global %s._reconstructor' % module,
            lambda m, module=module: CALL(
                G(module, '_reconstructor'), G('subprocess', 'Popen'),
                G('subprocess', 'Popen'), _popen(m)))
    for module in ('copyreg', 'copy_reg')] + [
    Hostile('OBJ-Popen', 'refused global subprocess.Popen',
            lambda m: b'(' + G('subprocess', 'Popen') + _popen(m) + b'o'),
    Hostile('INST-Popen', 'refused global subprocess.Popen',
            lambda m: b'(' + _popen(m) + b'isubprocess\nPopen\n'),
    Hostile('STACK_GLOBAL-system', 'refused global os.system',
            lambda m: CALL(SG('os', 'system'), U(touch(m)))),
    _refused('NEWOBJ-Popen', 'refused global subprocess.Popen',
             lambda m: G('subprocess', 'Popen') + TUP(_popen(m)) + b'\x81'),
    _real('reduce-os.system-p0', 'refused global posix.system', os.system,
          lambda m: (touch(m),), 0),
    _real('reduce-os.system-p1', 'refused global posix.system', os.system,
          lambda m: (touch(m),), 1),
    # (Protocol 2 pickles name builtins the Python 2 way.)
    _real('reduce-eval-p2', 'refused global __builtin__.eval', eval,
          lambda m: ('__import__("os").system(%r)' % touch(m),), 2),
    _real('reduce-Popen-p4', 'refused global subprocess.Popen',
          subprocess.Popen, lambda m: (['touch', m],), 4),
    _real('reduce-getattr-p5', 'refused global builtins.getattr', _Reduce(
        getattr, (_Reduce(__import__, ('os',)), 'system')),
        lambda m: (touch(m),), 5),
    _refused('PERSID', 'refused persistent id',
             lambda m: b'P' + touch(m).encode() + b'\n'),
    _refused('BINPERSID', 'refused persistent id',
             lambda m: U(touch(m)) + b'Q'),
    _refused('EXT1', 'undecodable', lambda m: b'\x82\x01'),
    _refused('EXT4', 'undecodable', lambda m: b'\x84\xff\xff\xff\x7f'),
    _refused('codecs-rot13', 'refused _codecs.encode',
             lambda m: CALL(G('_codecs', 'encode'), U(m), U('rot13'))),
    _refused('codecs-base64', 'refused _codecs.encode',
             lambda m: CALL(G('_codecs', 'encode'), BY(b'x'), U('base64'))),
    # bytes() with arguments allocates from a tiny message (2 GB from a
    # few bytes) or reaches other codecs: only bytes() is allowed.
    _refused('bytes-2**40', 'refused bytes() with arguments',
             lambda m: CALL(G('builtins', 'bytes'), LONG(2 ** 40))),
    _refused('bytes-2**27', 'refused bytes() with arguments',
             lambda m: CALL(G('builtins', 'bytes'), LONG(2 ** 27))),
    _refused('bytes-str-codec', 'refused bytes() with arguments',
             lambda m: CALL(G('builtins', 'bytes'), U(m), U('utf-16'))),
    # BUILD with a slot state on an allowed global: setattr() on the
    # object the unpickler hands out, for the whole process.
    _refused('BUILD-codecs.encode', None,
             lambda m: G('_codecs', 'encode') + TUP(b'N', DCT(
                 (U('__defaults__'), TUP(U('rot13'))))) + b'b'),
    _refused('BUILD-bytes', None, lambda m: G('builtins', 'bytes') + TUP(
        b'N', DCT((U('fromhex'), U(m)))) + b'b')]

# Dangerous and odd global names (module:name) for the random-global cases.
DANGEROUS_GLOBALS = [tuple(item.split(':')) for item in """
    os:system os:popen os:execv os:remove posix:system nt:system
    subprocess:Popen subprocess:check_output builtins:eval builtins:exec
    builtins:compile builtins:open builtins:getattr builtins:setattr
    builtins:__import__ builtins:globals builtins:bytes.fromhex
    builtins:bytearray builtins:type builtins:object __builtin__:eval
    copyreg:_reconstructor copy_reg:_reconstructor pickle:loads
    _pickle:loads marshal:loads types:FunctionType types:CodeType
    ctypes:CDLL shutil:rmtree importlib:import_module runpy:run_path
    code:InteractiveInterpreter zrsd.protocol:SafeUnpickler
    zrsd.protocol:_BUILTIN_GLOBALS _codecs:decode codecs:encode
    _codecs:lookup datetime:sys datetime:datetime.now datetime:_time
    ZODB.FileStorage:FileStorage twisted.internet:reactor
    signal:raise_signal sys:exit os:_exit faulthandler:_sigsegv
    : os: :system ..:.. \u00e9t\u00e9:caf\u00e9 os.path:join""".split()]


def random_name(rng):
    alphabet = 'abcdefghijklmnopqrstuvwxyz_.0123456789ABCXYZ\u00e9\u4e2d '
    return ''.join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))


def arm_check(directory):
    """Load every armed hostile pickle with plain `pickle.loads`: each must
    create its marker.  Returns (armed, [names that did not fire])."""
    os.makedirs(directory, exist_ok=True)
    armed = [h for h in HOSTILES if h.armed]
    duds = []
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
