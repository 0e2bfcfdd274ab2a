"""Disk-full variant `injected` of the torture (`disk_full.InjectedSpace`):
on a zrsd's PYTHONPATH, it makes the writable FileStorage's data file
refuse to grow past the byte quota in $ZRSD_TORTURE_QUOTA_FILE as a full
disk does (writing what fits, raising ENOSPC); blob files are written.
"""
import errno
import os

_QUOTA_FILE = os.environ.get('ZRSD_TORTURE_QUOTA_FILE')


class _QuotaFile:
    def __init__(self, file, quota_file):
        self._file, self._quota_file = file, quota_file

    def __getattr__(self, name):
        return getattr(self._file, name)

    def write(self, data):
        with open(self._quota_file) as f:
            quota = int(f.read())
        pos = self._file.tell()
        if pos + len(data) > quota:
            fits = max(0, quota - pos)
            if fits:
                self._file.write(bytes(data[:fits]))
            raise OSError(errno.ENOSPC, 'No space left on device '
                          '(injected by the zrsd torture suite)')
        return self._file.write(data)


if _QUOTA_FILE:
    from ZODB.FileStorage.FileStorage import FileStorage as _FileStorage

    _original_init = _FileStorage.__init__

    def _init(self, *args, **kw):
        _original_init(self, *args, **kw)
        if not self._is_read_only:
            self._file = _QuotaFile(self._file, _QUOTA_FILE)

    _FileStorage.__init__ = _init
