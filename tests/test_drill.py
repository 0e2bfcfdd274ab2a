"""`make drill` (`scripts/drill.py`) must come out clean.

The drill runs the README's failover runbook with real zrsd processes:
a planned switchover under load that loses nothing, then an unplanned
failover (a SIGKILLed primary whose last commits one replica never
received) repaired with `zrsd-rewind`.  Here it runs with blobs, and we
check its verdict and that what it says was lost is what both rewinds
removed.
"""
import os
import re
import subprocess
import sys

from harness.process import ROOT

SCRIPT = os.path.join(ROOT, 'scripts', 'drill.py')

LOST = re.compile(r'^lost in the unplanned failover: (\d+) transactions: '
                  r'([0-9a-f ]+)$', re.M)


def test_failover_drill(tmp_path):
    done = subprocess.run(
        [sys.executable, SCRIPT, '--blobs', '--workdir',
         str(tmp_path / 'drill')],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    output = done.stdout.decode('utf-8', 'replace')
    print(output)
    assert done.returncode == 0, output
    assert 'result: OK' in output
    assert '\nlost in the planned switchover: none\n' in output
    match = LOST.search(output)
    assert match, output
    lost = match.group(2).split()
    assert int(match.group(1)) == len(lost) > 0
    # zrsd-rewind's own lines: removed from A, listed for B, removed
    # from B.
    removed = re.findall(r'^ +removed ([0-9a-f]{16}) ', output, re.M)
    listed = re.findall(r'^ +would remove ([0-9a-f]{16}) ', output, re.M)
    assert removed == lost + lost
    assert listed == lost
    assert 'nothing to rewind' in output
