"""Record the file-system operations made under one directory.

`Recorder(root)`, a context manager, interposes on the calls zrsd,
FileStorage and the blob directory make (`open`, `os.open`, `os.fsync`,
`os.fdatasync`, renames, unlinks, `os.mkdir`, file `write` and `truncate`,
zrsd's `disk.BlobFile`) and appends to `ops` (paths relative to `root`;
everything else passes through; one thread at a time):

    ('create', path)            a new empty file
    ('mkdir', path)
    ('write', path, offset, data)
    ('truncate', path, size)
    ('fsync', path)             a file (fsync, fdatasync) or a directory
    ('rename', source, target)
    ('unlink', path)
    ('publish', tid)            (`publish`, called by the workload)
"""
import builtins
import os
import sys

from zrsd import disk

_FS_MODULE = 'ZODB.FileStorage.FileStorage'


class _File:
    """A recording proxy of a writable file object."""

    def __init__(self, recorder, path, file):
        self._recorder, self._path, self._file = recorder, path, file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def __iter__(self):
        return iter(self._file)

    def write(self, data):
        self._recorder.ops.append(('write', self._path, self._file.tell(),
                                   data.encode() if isinstance(data, str)
                                   else bytes(data)))
        return self._file.write(data)

    def truncate(self, size=None):
        size = self._file.tell() if size is None else size
        self._recorder.ops.append(('truncate', self._path, size))
        return self._file.truncate(size)


class Recorder:

    def __init__(self, root):
        self.root = os.path.realpath(root)
        self.ops, self._saved = [], []

    def relative(self, path):
        """`path` relative to the root, or None outside it."""
        if isinstance(path, int):
            path = os.readlink('/proc/self/fd/%d' % path)
        relative = os.path.relpath(os.path.realpath(path), self.root)
        return None if relative.split(os.sep)[0] == '..' else relative

    def publish(self, tid):
        self.ops.append(('publish', tid))

    def _note(self, kind, *paths):
        relative = [self.relative(p) for p in paths]
        if None not in relative:
            self.ops.append((kind,) + tuple(relative))

    # -- the interposed calls ---------------------------------------------

    def _opened(self, path, existed, truncated):
        """Note a file opened for writing: created or truncated."""
        if path is not None and not existed:
            self.ops.append(('create', path))
        elif path is not None and truncated:
            self.ops.append(('truncate', path, 0))

    def _open(self, file, mode='r', *args, **kw):
        path = (self.relative(file) if any(c in mode for c in 'wax+') and
                isinstance(file, (str, bytes, os.PathLike)) else None)
        existed = path is not None and os.path.exists(file)
        result = self._real['open'](file, mode, *args, **kw)
        self._opened(path, existed, 'w' in mode)
        return result if path is None else _File(self, path, result)

    def _os_open(self, path, flags, mode=0o777, *args, **kw):
        relative = self.relative(path) if flags & os.O_CREAT else None
        existed = relative is not None and os.path.exists(path)
        fd = self._real['os.open'](path, flags, mode, *args, **kw)
        self._opened(relative, existed, flags & os.O_TRUNC)
        return fd

    def _noting(self, real, kind, paths=1):
        """`real`, noting (`kind`, its first `paths` arguments) once done."""
        def call(*args, **kw):
            result = real(*args, **kw)
            self._note(kind, *args[:paths])
            return result
        return call

    def _blob_file(self, path):
        recorder = self

        class RecordingBlobFile(self._real['BlobFile']):
            def write(self, data):
                relative = recorder.relative(path)
                if relative is not None:
                    recorder.ops.append(('write', relative, self.tell(),
                                         bytes(data)))
                return super().write(data)

        return RecordingBlobFile(path)

    # -- install and remove -----------------------------------------------

    def __enter__(self):
        self._real = {'open': builtins.open, 'os.open': os.open,
                      'BlobFile': disk.BlobFile}
        fsync = self._noting(os.fsync, 'fsync')
        unlink = self._noting(os.unlink, 'unlink')
        patches = [
            (builtins, 'open', self._open), (os, 'open', self._os_open),
            (os, 'fsync', fsync), (sys.modules[_FS_MODULE], 'fsync', fsync),
            # The data and the size: what the model's fsync of a file keeps.
            (os, 'fdatasync', self._noting(os.fdatasync, 'fsync')),
            (os, 'rename', self._noting(os.rename, 'rename', 2)),
            (os, 'replace', self._noting(os.replace, 'rename', 2)),
            (os, 'unlink', unlink), (os, 'remove', unlink),
            (os, 'mkdir', self._noting(os.mkdir, 'mkdir')),
            (disk, 'BlobFile', self._blob_file),
        ]
        for owner, name, value in patches:
            self._saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)
        return self

    def __exit__(self, *exc):
        while self._saved:
            setattr(*self._saved.pop())
