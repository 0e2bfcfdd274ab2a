"""The shipped sample configurations parse; `zrsd -C` refuses bad ones
(exit status 2, one line naming the file, the line and the key)."""
import decimal
import os

import pytest

from zrsd import config

from harness.certs import Authority
from harness.process import ROOT, read_text, run

GOOD = '''\
<zeo>
  address 127.0.0.1:8100
</zeo>
<zrs 1>
  replicate-from 127.0.0.1:5000
%(extra)s
  <filestorage>
    path %(dir)s/Data.fs
  </filestorage>
</zrs>
'''


def good(tmp_path, extra=''):
    return GOOD % dict(dir=tmp_path, extra=extra)


def twice(text, header, fs):
    """`text`, then its <zrs 1> section again as `header` on file `fs`."""
    section = text[text.index('<zrs 1>'):]
    return text + section.replace('<zrs 1>', header).replace('Data.fs', fs)


def write(tmp_path, text, name='zrs.conf'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refused(tmp_path, text, name='zrs.conf'):
    """`zrsd -C` on `text` (None: no file) exits 2 without a traceback;
    returns (path, stderr)."""
    path = write(tmp_path, text) if text else str(tmp_path / name)
    result = run('zrsd', '-C', path, status=2, timeout=60)
    assert 'Traceback' not in result.stderr
    return path, result.stderr


def sample(tmp_path, relative, host=None):
    """(config, its one storage) of a shipped sample moved into tmp_path;
    with a `host`, its /etc/zrsd/tls holds ca.pem and `host`'s key pair."""
    text = read_text(os.path.join(ROOT, relative))
    for directory in ('/var/lib/zrsd', '/var/log/zrsd', '/run/zrsd',
                      '/etc/zrsd/tls'):
        local = tmp_path / directory.strip('/').replace('/', '-')
        local.mkdir(exist_ok=True)
        text = text.replace(directory, str(local))
    if host is not None:
        authority = Authority(tmp_path / 'etc-zrsd-tls', 'sample')
        os.rename(authority.path, tmp_path / 'etc-zrsd-tls' / 'ca.pem')
        authority.issue(host)
    loaded = config.load(write(tmp_path, text, os.path.basename(relative)))
    (zrs,) = loaded.storages
    return loaded, zrs


def test_sample_replica_config_parses(tmp_path):
    loaded, zrs = sample(tmp_path, 'etc/zrs.conf')
    assert (zrs.name, zrs.replicate_from) == ('1', ('primary.example.com',
                                                    5000))
    assert (zrs.section.keep_alive_delay, zrs.section.check_checksums,
            zrs.section.max_message_size) == (60, True, 256 << 20)
    assert (loaded.zeo.address.address, loaded.zeo.invalidation_queue_size
            ) == (('', 8100), 10000)
    assert loaded.eventlog is not None


def test_sample_tls_config_parses(tmp_path):
    loaded, zrs = sample(tmp_path, 'etc/tls.conf', 'replica1')
    assert zrs.tls is not None and zrs.tls.check_hostname
    assert loaded.zeo.ssl.zeo_context() is not None
    assert loaded.monitor.address.address == ('127.0.0.1', 8180)


def test_sample_primary_config_parses(tmp_path):
    loaded, zrs = sample(tmp_path, 'etc/primary.conf', 'primary')
    assert (zrs.replicate_to, zrs.replicate_from) == (('10.0.0.1', 5000), None)
    assert [str(n) for n in zrs.allowed_networks] == ['10.0.0.0/24']
    assert zrs.tls is not None
    assert zrs.section.handshake_timeout == 30
    assert loaded.zeo.transaction_timeout == 300


@pytest.mark.parametrize('name, role', [('replica', 'replicate_from'),
                                        ('primary', 'replicate_to')])
def test_demo_configs_parse(tmp_path, monkeypatch, name, role):
    monkeypatch.chdir(tmp_path)
    loaded = config.load(os.path.join(ROOT, 'etc/demo/%s.conf' % name))
    assert [z.name for z in loaded.storages] == ['1']
    assert getattr(loaded.storages[0], role) is not None


def test_defaults(tmp_path):
    loaded = config.load(write(tmp_path, good(tmp_path)))
    section = loaded.storages[0].section
    assert (section.keep_alive_delay, section.reconnect_delay,
            section.max_reconnect_delay, section.check_checksums) == (
        60, 1.0, 60.0, True)
    assert loaded.zeo.invalidation_queue_size == 10000


def test_several_storages_and_allowed_globals(tmp_path):
    text = twice(good(tmp_path, '  allow-global decimal.Decimal'),
                 '<zrs catalog>', 'Catalog.fs')
    loaded = config.load(write(tmp_path, text))
    assert [z.name for z in loaded.storages] == ['1', 'catalog']
    allowed = loaded.storages[0].allowed_globals[('decimal', 'Decimal')]
    assert allowed('1.5') == decimal.Decimal('1.5')


@pytest.mark.parametrize('extra, words', [
    ('  keep-alive-delay soon', ['keep-alive-delay', 'soon']),
    ('  bogus-key 1', ['bogus-key']),
    ('  reconnect-delay -1', ['reconnect-delay', 'must be > 0']),
    ('  max-reconnect-delay 0.5', ['max-reconnect-delay']),
    ('  allow-global nosuch.module.thing', ['allow-global', 'nosuch']),
    ('  check-checksums maybe', ['check-checksums', 'maybe']),
    # Host bits set: a typo, not silently 10.0.0.0/8.
    ('  allow-from 10.1.2.3/8', ['allow-from', '10.1.2.3/8', 'host bits']),
    ('  pack sometimes', ['pack', 'sometimes']),
    ('  shutdown-catch-up-timeout -1', ['shutdown-catch-up-timeout',
                                        'must be >= 0']),
    ('  replicate-to 127.0.0.1:5000', ['must differ from replicate-from']),
])
def test_bad_value_names_file_line_and_key(tmp_path, extra, words):
    path, stderr = refused(tmp_path, good(tmp_path, extra))
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for word in ['%s:6:' % path] + words:
        assert word in lines[0]


def test_missing_replicate_from_names_the_section(tmp_path):
    path, stderr = refused(tmp_path, good(tmp_path).replace(
        '  replicate-from 127.0.0.1:5000\n', ''))
    assert '%s:4:' % path in stderr
    assert 'replicate-from or replicate-to is required' in stderr


def test_missing_file_and_syntax_error(tmp_path):
    assert 'nope.conf: no such file' in refused(tmp_path, None, 'nope.conf')[1]
    path, stderr = refused(tmp_path, '<zeo>\n  address 8100\n<zrs>\n')
    assert len(stderr.strip().splitlines()) == 1
    assert path in stderr


def test_duplicate_storage_names(tmp_path):
    text = twice(good(tmp_path), '<zrs 1>', 'Other.fs')
    path, stderr = refused(tmp_path, text)
    assert "%s:17:" % path in stderr and "'1'" in stderr
    # An unnamed section is storage 1 too.
    assert "more than one <zrs> section named 1" in refused(
        tmp_path, text.replace('<zrs 1>', '<zrs>', 1))[1]


def test_local_storage_must_be_a_filestorage(tmp_path):
    text = good(tmp_path)
    text = text[:text.index('  <filestorage>')] + \
        '  <mappingstorage>\n  </mappingstorage>\n</zrs>\n'
    assert 'must be a <filestorage>' in refused(tmp_path, text)[1]


def test_replication_tls_needs_a_ca(tmp_path):
    cert, key = Authority(tmp_path, 'ca').issue('node')
    extra = '  <ssl>\n    certificate %s\n    key %s\n  </ssl>' % (cert, key)
    path, stderr = refused(tmp_path, good(tmp_path, extra))
    assert '%s:6:' % path in stderr
    assert '<ssl>' in stderr and 'authenticate' in stderr
