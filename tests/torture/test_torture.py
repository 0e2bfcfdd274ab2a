"""The short torture run (`scripts/torture.py`) must come out clean.

It runs every scenario of the torture suite once, briefly: 3 kill -9
cycles of a replica, 10 cuts of the replication link plus a stall and a
throttled period, 1 kill -9 and restart of the primary under a cascade,
1 pack during a catch-up, 1 disk-full episode (a tmpfs when this process
may mount one, else the injected variant: the script says which ran).
The script compares every replica with its primary transaction by
transaction and scans every log; here we only check its verdict, and show
its summary when it is not clean.

`ZRSD_TORTURE_SEED` picks the seed (default fixed, so a failure can be
re-run with the same random choices).
"""
import os
import subprocess
import sys

from support import ROOT

SCRIPT = os.path.join(ROOT, 'scripts', 'torture.py')


def test_short_torture_run_is_clean(tmp_path):
    seed = os.environ.get('ZRSD_TORTURE_SEED', '20240611')
    done = subprocess.run(
        [sys.executable, SCRIPT, '--seed', seed,
         '--workdir', str(tmp_path / 'torture')],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    output = done.stdout.decode('utf-8', 'replace')
    print(output)
    assert 'disk-full variant that ran: ' in output, output
    assert 'result: CLEAN' in output, output
    assert done.returncode == 0, output
    for line in ('mismatches:              0',
                 'crashes (not torture):   0',
                 'unexpected log errors:   0',
                 'scenario failures:       0'):
        assert line in output, output
