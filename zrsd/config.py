"""Configuration: the ZConfig schema's datatypes and loading.

Flow: `zrsd/schema.xml` (ZEO-compatible `<zeo>`, zdaemon's `<runner>`,
ZConfig's `<eventlog>`, `<zrs>` sections from `zrsd/component.xml`) ->
validated section objects -> `ZRSConfig.open_storage()`.  Nothing outside
this module parses configuration files.
"""
import importlib
import ipaddress
import os
import re

import ZConfig
import ZODB.config

from zrsd.protocol import (DEFAULT_ALLOWED_GLOBALS, MessageDecoder,
                           resolve_globals)
from zrsd.daemon.replication import open_section

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), 'schema.xml')

_schema = None


class ConfigError(Exception):
    """A configuration problem, with the file, line and key in its text."""


def schema():
    global _schema
    if _schema is None:
        _schema = ZConfig.loadSchema(SCHEMA_PATH)
        # zdaemon's <runner> requires `program`; zrsdctl defaults it to
        # `zrsd -C` on this same file, so a zrsd file may leave it out.
        _schema.gettype('runner').getinfo('program').minOccurs = 0
    return _schema


class SectionError(ValueError):
    """A value in a `<zrs>` section is wrong; names the section and key."""

    def __init__(self, section_name, attribute, problem):
        self.section_name = section_name
        self.key = _KEY_NAMES.get(attribute, attribute.replace('_', '-'))
        # e.g. "replicate-from is required", "<mappingstorage> cannot ..."

        super().__init__('%s %s' % (self.key, problem))


_KEY_NAMES = {'allowed_globals': 'allow-global',
              'allowed_networks': 'allow-from'}


def _choice(key, choices):
    def datatype(value):
        value = value.strip().lower()
        if value not in choices:
            raise ValueError('%s must be %s, not %r' % (
                key, ' or '.join(choices), value))
        return value
    datatype.__doc__ = 'The datatype of the `%s` key: %s.' % (
        key, ', '.join(choices))
    return datatype


pack_policy = _choice('pack', ('allow', 'refuse'))
copy_policy = _choice('copy-file', ('new', 'on', 'off'))


class SSLSection:
    """The datatype of an `<ssl>` section: the raw settings.

    `<zeo>` turns them into an `ssl.SSLContext` for ZEO, `<zrs>` into
    `zrsd.network.tls.ReplicationTLS` for Twisted.
    """

    def __init__(self, section):
        self.section = section
        self.certificate = section.certificate
        self.key = section.key
        self.authenticate = section.authenticate
        self.password_function = section.password_function
        self.check_hostname = section.check_hostname
        self.server_hostname = section.server_hostname

    def password(self):
        """The key's password from `password-function`, or None."""
        if not self.password_function:
            return None
        module_name, _, name = self.password_function.rpartition('.')
        module = importlib.import_module(module_name)
        return getattr(module, name)()

    def zeo_context(self):
        """A server `ssl.SSLContext` for the ZEO port (as runzeo builds)."""
        import ZEO.zconfig
        if not self.authenticate:
            raise ConfigError('<zeo> <ssl>: authenticate is required (ZEO '
                              'authenticates its clients)')
        return ZEO.zconfig.server_ssl(self)

    def replication(self):
        from zrsd.network.tls import ReplicationTLS
        return ReplicationTLS(
            self.certificate, self.key, self.authenticate, self.password(),
            self.check_hostname, self.server_hostname)


class ZRSConfig:
    """The datatype of a `<zrs>` section (checked when the file loads)."""

    def __init__(self, section):
        self.section = section
        self.name = section.getSectionName() or '1'
        if section.replicate_from is None and section.replicate_to is None:
            raise SectionError(self.name, 'replicate-from',
                               'or replicate-to is required')
        if (section.replicate_from is not None
                and section.replicate_to is not None
                and section.replicate_from.address
                == section.replicate_to.address):
            raise SectionError(self.name, 'replicate-to',
                               'must differ from replicate-from')
        if section.handshake_timeout <= 0:
            raise SectionError(self.name, 'handshake_timeout', 'must be > 0')
        if not isinstance(section.base, ZODB.config.FileStorage):
            kind = section.base.config.getSectionType()
            raise SectionError(
                self.name, '<%s>' % kind,
                'cannot hold a replica: the local storage must be a '
                '<filestorage>')
        for key in ('reconnect_delay', 'max_reconnect_delay'):
            if getattr(section, key) <= 0:
                raise SectionError(self.name, key, 'must be > 0')
        if section.max_reconnect_delay < section.reconnect_delay:
            raise SectionError(self.name, 'max_reconnect_delay',
                               'must be >= reconnect-delay')
        if section.max_secondaries < 1:
            raise SectionError(self.name, 'max_secondaries', 'must be >= 1')
        if section.shutdown_catch_up_timeout < 0:
            raise SectionError(self.name, 'shutdown_catch_up_timeout',
                               'must be >= 0')
        if section.keep_alive_delay < 0:
            raise SectionError(self.name, 'keep_alive_delay', 'must be >= 0')
        if section.max_message_size < 1024:
            raise SectionError(self.name, 'max_message_size',
                               'must be at least 1KB')
        self.tls = None
        if isinstance(section.ssl, SSLSection):
            try:
                self.tls = section.ssl.replication()
            except Exception as exc:  # a bad file, key or password
                raise SectionError(self.name, '<ssl>', str(exc))
        if self.tls is not None and any(
                value is not None and isinstance(value.address, str)
                for value in (section.replicate_from, section.replicate_to)):
            raise SectionError(self.name, '<ssl>',
                               'needs TCP addresses, not unix sockets')
        if section.ssl is not None and not isinstance(section.ssl,
                                                      SSLSection):
            # Under runzeo, <ssl> is ZEO's own section type.
            raise SectionError(
                self.name, '<ssl>', 'is ZEO\'s server <ssl> under runzeo; '
                'replication TLS needs the zrsd command')
        try:
            # strict: 10.1.2.3/8 is a typo for 10.1.2.3/32 or 10.0.0.0/8,
            # not silently the latter.
            self.allowed_networks = [
                ipaddress.ip_network(network, strict=True)
                for network in section.allowed_networks or ()]
        except ValueError as exc:
            raise SectionError(self.name, 'allowed_networks', str(exc))
        # Imported now, so that a typo fails at start-up, not mid-stream.
        try:
            self.allowed_globals = resolve_globals(
                DEFAULT_ALLOWED_GLOBALS + tuple(section.allowed_globals or ()))
        except ValueError as exc:
            raise SectionError(self.name, 'allowed_globals', str(exc))

    @property
    def replicate_from(self):
        """The primary's address, or None for a primary."""
        value = self.section.replicate_from
        return value.address if value is not None else None

    @property
    def replicate_to(self):
        """Where to serve secondaries, or None."""
        value = self.section.replicate_to
        return value.address if value is not None else None

    @property
    def role(self):
        """primary, replica or cascade, by the section's keys."""
        if self.replicate_from is None:
            return 'primary'
        return 'cascade' if self.replicate_to is not None else 'replica'

    @property
    def path(self):
        """The absolute path of the local FileStorage."""
        return os.path.abspath(self.section.base.config.path)

    def open(self):
        """Open as a ZODB storage section (for `%import zrsd` in runzeo).

        Replication runs in a process-wide reactor thread and stops when the
        storage is closed.
        """
        return open_section(self)

    def decoder(self):
        return MessageDecoder(self.allowed_globals)

    @property
    def blob_dir(self):
        """The blob directory of the local FileStorage, or None."""
        return self.section.base.config.blob_dir

    def open_base(self):
        """Open the local FileStorage (with blobs when blob-dir is set)."""
        return self.section.base.open()


def _find_line(path, section_name, key):
    """Line number of `key` in the `<zrs section_name>` section of `path`.

    ZConfig reports no position for errors raised by a section's datatype;
    find it in the file: the key's line, else the section's first line.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    header = re.compile(r'\s*<zrs(\s+(\S+?))?\s*>', re.I)
    section_line = None
    for number, line in enumerate(lines, 1):
        match = header.match(line)
        if match:
            if (match.group(2) or '1') == section_name:
                section_line = number
            elif section_line is not None:
                break
        elif section_line is not None and line.split()[:1] == [key]:
            return number
    return section_line


def _key_at(path, lineno):
    try:
        with open(path) as f:
            line = f.read().splitlines()[lineno - 1]
    except (OSError, IndexError):
        return None
    words = line.split()
    return words[0] if words and not words[0].startswith('<') else None


def describe_error(exc, path):
    """One line naming the file, the line and the key of a ZConfig error."""
    url = getattr(exc, 'url', None) or path
    if url.startswith('file://'):
        url = url[len('file://'):]
    lineno = getattr(exc, 'lineno', None)
    message = ' '.join(str(getattr(exc, 'message', None) or exc).split())
    cause = getattr(exc, 'exception', None)
    if isinstance(cause, SectionError):
        lineno = _find_line(url, cause.section_name, cause.key)
        message = '<zrs %s>: %s' % (cause.section_name, message)
    elif isinstance(exc, ZConfig.DataConversionError) and lineno:
        key = _key_at(url, lineno)
        if key and not message.startswith(key):
            message = '%s: %s' % (key, message)
    if lineno and lineno > 0:
        return '%s:%s: %s' % (url, lineno, message)
    return '%s: %s' % (url, message)


def choose_section(config, name=None):
    """The `<zrs NAME>` section of a loaded `config`, or, without a name,
    the only one with replicate-from (what the tools act on: a replica).
    ValueError says why there is none."""
    if name is not None:
        for zrs in config.storages:
            if zrs.name == name:
                return zrs
        raise ValueError('no <zrs %s> section in the configuration' % name)
    replicas = [zrs for zrs in config.storages
                if zrs.replicate_from is not None]
    if len(replicas) == 1:
        return replicas[0]
    if not replicas:
        raise ValueError('no <zrs> section has replicate-from')
    raise ValueError('several <zrs> sections replicate (%s): name one' % (
        ', '.join(zrs.name for zrs in replicas)))


def load(path):
    """Load and validate a zrsd config file; ConfigError on any problem."""
    if not os.path.exists(path):
        raise ConfigError('%s: no such file' % path)
    try:
        config, _ = ZConfig.loadConfig(schema(), path)
    except ZConfig.ConfigurationError as exc:
        raise ConfigError(describe_error(exc, path)) from exc
    names = [zrs.name for zrs in config.storages]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError('%s: more than one <zrs> section named %s'
                          % (path, ', '.join(duplicates)))
    return config
