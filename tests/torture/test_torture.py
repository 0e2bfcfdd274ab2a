"""The torture runs must come out clean: the short run (`make test`, each
scenario once, briefly; the disk-full variant that ran is in the summary)
and the long one (`--long`, marker `long`, `make torture`).
`ZRSD_TORTURE_SEED` picks the seed (default fixed; re-run a failure with
`scripts/torture.py --seed N`).
"""
import os

import pytest

from torture.run import main


@pytest.mark.parametrize('args', [
    pytest.param([], id='short'),
    pytest.param(['--long'], id='long', marks=[
        pytest.mark.long, pytest.mark.timeout(3600)])])
def test_torture_run_is_clean(tmp_path, capsys, args):
    seed = os.environ.get('ZRSD_TORTURE_SEED', '20240611')
    status = main(['--seed', seed, '--workdir', str(tmp_path / 'torture')]
                  + args)
    output = capsys.readouterr().out
    print(output)
    assert 'disk-full variant that ran: ' in output, output
    assert 'result: CLEAN' in output, output
    assert status == 0, output
    for line in ('mismatches:              0',
                 'crashes (not torture):   0',
                 'unexpected log errors:   0',
                 'scenario failures:       0'):
        assert line in output, output
