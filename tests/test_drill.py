"""`make drill` (`scripts/drill.py --blobs`) comes out clean, and what it
says was lost in the unplanned failover is what both rewinds removed."""
import re
import subprocess
import sys

from drill import REMOVED
from harness.process import ROOT


def test_failover_drill(tmp_path):
    done = subprocess.run(
        [sys.executable, ROOT + '/scripts/drill.py', '--blobs', '--workdir',
         str(tmp_path / 'drill')], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors='replace', timeout=600)
    output = done.stdout
    print(output)
    assert done.returncode == 0 and 'result: OK' in output, output
    assert '\nlost in the planned switchover: none\n' in output
    match = re.search(r'^lost in the unplanned failover: (\d+) '
                      r'transactions: ([0-9a-f ]+)$', output, re.M)
    assert match, output
    lost = match.group(2).split()
    assert int(match.group(1)) == len(lost) > 0
    # zrsd-rewind's lines: removed from A, listed for B, removed from B.
    assert REMOVED.findall(output) == [
        (verb, tid) for verb in ('removed', 'would remove', 'removed')
        for tid in lost]
    assert 'nothing to rewind' in output
