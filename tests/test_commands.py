"""The command-line surface of every installed command: `--help` says what
it does and its exit statuses, `--version` names the installed version,
and a usage or configuration error is one line on stderr."""
import importlib.metadata

import pytest

from harness.process import free_port, run

COMMANDS = ['zrsd', 'zrsdctl', 'zrsd-check', 'zrsd-verify', 'zrsd-rewind']


@pytest.mark.parametrize('command', COMMANDS)
def test_help_and_version(command):
    usage = run(command, '--help').stdout
    assert usage.startswith('usage: ' + command)
    assert 'xit status' in usage
    assert run(command, '--version').stdout.strip() == '%s %s' % (
        command, importlib.metadata.version('zrsd'))


BAD_PORT = '''\
<zrs 1>
  replicate-from 127.0.0.1:99999
  <filestorage>
    path %s
  </filestorage>
</zrs>
'''


@pytest.mark.parametrize('command', [('zrsd', '-C', '{}'),
                                     ('zrsdctl', '-C', '{}', 'status')])
def test_a_configuration_error_is_one_line(tmp_path, command):
    config = tmp_path / 'zrs.conf'
    config.write_text(BAD_PORT % (tmp_path / 'Data.fs'))
    result = run(*[str(config) if a == '{}' else a for a in command],
                 status=2)
    assert result.stderr.splitlines() == [
        '%s: configuration error: %s:2: replicate-from: 99999 is above '
        'upper bound (65535)' % (command[0], config)]


def test_check_names_what_is_missing():
    result = run('zrsd-check', '127.0.0.1:1', '127.0.0.1:2', status=2)
    assert result.stderr.splitlines() == [
        'zrsd-check: error: at least one of -w, -e, -m is required '
        '(see --help)']


def test_verify_does_not_wait_for_a_refused_port():
    """Nothing listening is known at once: no wait for the --timeout (the
    run would outlast the 60 s of `run` otherwise)."""
    address = '127.0.0.1:%d' % free_port()
    result = run('zrsd-verify', '--timeout', '3600', address, address,
                 status=2, timeout=60)
    assert result.stderr.splitlines() == [
        'zrsd-verify: cannot reach the replica at %s: Connection refused'
        % address]
