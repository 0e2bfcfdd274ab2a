"""Configuration: the shipped samples parse; bad files fail clearly.

Bad configurations are checked through the real `zrsd` command: exit status
2 and one line on stderr naming the file, the line and the key.
"""
import os
import subprocess

import pytest

from zrsd import config

from harness.process import BIN, ROOT

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


def write(tmp_path, text, name='zrs.conf'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def sample(tmp_path, relative):
    """A shipped sample with its absolute directories moved into tmp_path."""
    with open(os.path.join(ROOT, relative)) as f:
        text = f.read()
    for directory in ('/var/lib/zrsd', '/var/log/zrsd', '/run/zrsd',
                      '/etc/zrsd/tls'):
        local = tmp_path / directory.strip('/').replace('/', '-')
        local.mkdir(exist_ok=True)
        text = text.replace(directory, str(local))
    return write(tmp_path, text, os.path.basename(relative))


def test_sample_replica_config_parses(tmp_path):
    loaded = config.load(sample(tmp_path, 'etc/zrs.conf'))
    (zrs,) = loaded.storages
    assert zrs.name == '1'
    assert zrs.replicate_from == ('primary.example.com', 5000)
    assert zrs.section.keep_alive_delay == 60
    assert zrs.section.check_checksums is True
    assert zrs.section.max_message_size == 256 << 20
    assert loaded.zeo.address.address == ('', 8100)
    assert loaded.zeo.invalidation_queue_size == 10000
    assert loaded.eventlog is not None


def test_sample_tls_config_parses(tmp_path):
    from harness.certs import Authority
    tls = tmp_path / 'etc-zrsd-tls'
    tls.mkdir()
    authority = Authority(tls, 'sample')
    os.rename(authority.path, tls / 'ca.pem')
    authority.issue('replica1')
    loaded = config.load(sample(tmp_path, 'etc/tls.conf'))
    (zrs,) = loaded.storages
    assert zrs.tls is not None and zrs.tls.check_hostname
    assert loaded.zeo.ssl.zeo_context() is not None
    assert loaded.monitor.address.address == ('127.0.0.1', 8180)


def test_sample_primary_config_parses(tmp_path):
    loaded = config.load(sample(tmp_path, 'etc/primary.conf'))
    (zrs,) = loaded.storages
    assert zrs.replicate_to == ('', 5000)
    assert zrs.replicate_from is None
    assert zrs.section.handshake_timeout == 30
    assert loaded.zeo.transaction_timeout == 300


@pytest.mark.parametrize('name, role', [('replica', 'replicate_from'),
                                        ('primary', 'replicate_to')])
def test_demo_configs_parse(tmp_path, monkeypatch, name, role):
    monkeypatch.chdir(tmp_path)
    loaded = config.load(os.path.join(ROOT, 'etc/demo/%s.conf' % name))
    assert [z.name for z in loaded.storages] == ['1']
    assert getattr(loaded.storages[0], role) is not None


def test_cascade_needs_distinct_addresses(tmp_path):
    text = GOOD % dict(dir=tmp_path, extra='  replicate-to 127.0.0.1:5000')
    result = run_zrsd(write(tmp_path, text))
    assert result.returncode == 2
    assert 'replicate-to must differ from replicate-from' in result.stderr


def test_defaults(tmp_path):
    loaded = config.load(write(tmp_path, GOOD % dict(dir=tmp_path, extra='')))
    (zrs,) = loaded.storages
    section = zrs.section
    assert (section.keep_alive_delay, section.reconnect_delay,
            section.max_reconnect_delay, section.check_checksums) == (
        60, 1.0, 60.0, True)
    assert loaded.zeo.invalidation_queue_size == 10000


def test_several_storages_and_allowed_globals(tmp_path):
    text = GOOD % dict(dir=tmp_path, extra='  allow-global decimal.Decimal')
    text += '''
<zrs catalog>
  replicate-from 127.0.0.1:5001
  <filestorage>
    path %s/Catalog.fs
  </filestorage>
</zrs>
''' % tmp_path
    loaded = config.load(write(tmp_path, text))
    assert [z.name for z in loaded.storages] == ['1', 'catalog']
    import decimal
    assert ('decimal', 'Decimal') in loaded.storages[0].allowed_globals
    allowed = loaded.storages[0].allowed_globals[('decimal', 'Decimal')]
    assert allowed('1.5') == decimal.Decimal('1.5')


def run_zrsd(path):
    return subprocess.run([os.path.join(BIN, 'zrsd'), '-C', path],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize('extra, line, words', [
    ('  keep-alive-delay soon', 6, ['keep-alive-delay', 'soon']),
    ('  bogus-key 1', 6, ['bogus-key']),
    ('  reconnect-delay -1', 6, ['reconnect-delay', 'must be > 0']),
    ('  max-reconnect-delay 0.5', 6, ['max-reconnect-delay']),
    ('  allow-global nosuch.module.thing', 6, ['allow-global', 'nosuch']),
    ('  check-checksums maybe', 6, ['check-checksums', 'maybe']),
    # Host bits set: a typo, not silently 10.0.0.0/8.
    ('  allow-from 10.1.2.3/8', 6, ['allow-from', '10.1.2.3/8',
                                    'host bits set']),
    ('  pack sometimes', 6, ['pack', 'sometimes']),
    ('  shutdown-catch-up-timeout -1', 6, ['shutdown-catch-up-timeout',
                                           'must be >= 0']),
])
def test_bad_value_names_file_line_and_key(tmp_path, extra, line, words):
    path = write(tmp_path, GOOD % dict(dir=tmp_path, extra=extra))
    result = run_zrsd(path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert '%s:%d:' % (path, line) in lines[0]
    for word in words:
        assert word in lines[0]
    assert 'Traceback' not in result.stderr


def test_missing_replicate_from_names_the_section(tmp_path):
    text = (GOOD % dict(dir=tmp_path, extra='')).replace(
        '  replicate-from 127.0.0.1:5000\n', '')
    path = write(tmp_path, text)
    result = run_zrsd(path)
    assert result.returncode == 2
    assert '%s:4:' % path in result.stderr
    assert 'replicate-from or replicate-to is required' in result.stderr


def test_missing_file_and_syntax_error(tmp_path):
    result = run_zrsd(str(tmp_path / 'nope.conf'))
    assert result.returncode == 2
    assert 'nope.conf: no such file' in result.stderr

    path = write(tmp_path, '<zeo>\n  address 8100\n<zrs>\n')
    result = run_zrsd(path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert path in result.stderr


def test_duplicate_storage_names(tmp_path):
    text = GOOD % dict(dir=tmp_path, extra='')
    text += text[text.index('<zrs 1>'):].replace('Data.fs', 'Other.fs')
    path = write(tmp_path, text)
    result = run_zrsd(path)
    assert result.returncode == 2
    assert "%s:17:" % path in result.stderr
    assert "'1'" in result.stderr

    # An unnamed section is storage 1 too.
    path = write(tmp_path, text.replace('<zrs 1>', '<zrs>', 1))
    result = run_zrsd(path)
    assert result.returncode == 2
    assert "more than one <zrs> section named 1" in result.stderr


def test_local_storage_must_be_a_filestorage(tmp_path):
    text = GOOD % dict(dir=tmp_path, extra='')
    text = text[:text.index('  <filestorage>')] + \
        '  <mappingstorage>\n  </mappingstorage>\n</zrs>\n'
    result = run_zrsd(write(tmp_path, text))
    assert result.returncode == 2, result
    assert 'must be a <filestorage>' in result.stderr


def test_replication_tls_needs_a_ca(tmp_path):
    from harness.certs import Authority
    cert, key = Authority(tmp_path, 'ca').issue('node')
    extra = '  <ssl>\n    certificate %s\n    key %s\n  </ssl>' % (cert, key)
    path = write(tmp_path, GOOD % dict(dir=tmp_path, extra=extra))
    result = run_zrsd(path)
    assert result.returncode == 2
    assert '%s:6:' % path in result.stderr
    assert '<ssl>' in result.stderr and 'authenticate' in result.stderr
