"""The installed versions of zrsd and of what it runs on."""
import importlib.metadata
import platform


def version(distribution='zrsd'):
    """The installed version of `distribution` (`setup.cfg` for zrsd)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return 'unknown'


def versions():
    """zrsd's version and its dependencies' (zrsd_build_info, /status)."""
    return {'version': version(), 'zodb': version('ZODB'),
            'zeo': version('ZEO'), 'twisted': version('Twisted'),
            'python': platform.python_version()}
