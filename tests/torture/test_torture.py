"""The torture runs come out clean: the short one (`make test`) and the
long one (`--long`, marker `long`, `make torture`).  `ZRSD_TORTURE_SEED`
picks the seed (re-run a failure with `scripts/torture.py --seed N`).
"""
import os

import pytest

from torture.run import main


@pytest.mark.parametrize('args', [
    pytest.param([], id='short'),
    pytest.param(['--long'], id='long', marks=[
        pytest.mark.long, pytest.mark.timeout(3600)])])
def test_torture_run_is_clean(tmp_path, capsys, args):
    status = main(['--seed', os.environ.get('ZRSD_TORTURE_SEED', '20240611'),
                   '--workdir', str(tmp_path / 'torture')] + args)
    output = capsys.readouterr().out
    print(output)
    assert status == 0, output
    for line in ('disk-full variant that ran: ', 'result: CLEAN',
                 'mismatches:              0', 'crashes (not torture):   0',
                 'unexpected log errors:   0', 'scenario failures:       0'):
        assert line in output, output
