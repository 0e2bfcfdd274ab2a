"""The benchmark on a tiny workload: each phase runs once, briefly, and
produces its figures (no timing is asserted)."""
import os

from .cli import parse_args, report, run_phases, summarise
from .workload import generate_workload


def test_every_phase_produces_its_figures(tmp_path):
    path = str(tmp_path / 'workload.fs')
    meta = generate_workload(path, transactions=200, big_transactions=1,
                             seed=7)
    blob_path = str(tmp_path / 'workload-blobs.fs')
    blob_meta = generate_workload(blob_path, transactions=200,
                                  big_transactions=1, seed=7, blobs=True)
    args = parse_args(['--preset', 'small', '--rounds', '1',
                       '--lag-seconds', '0.3', '--read-seconds', '0.3',
                       '--blob-mb', '2', '--no-reference-lag'])
    run, results = run_phases(args, path, meta, str(tmp_path / 'run'),
                              (blob_path, blob_meta))
    s = summarise(results, meta)
    text = report(results, s, meta, args)

    assert not run.owned and not os.path.exists(run.primary_dir or '/-')
    for key, row in s['catchup'].items():
        assert row.get('verified'), (key, row, text)
    for key in 'fgh':       # the file copy: copied, timed in parts
        assert s['catchup'][key]['split']['copy'], (key, text)
    assert s['catchup']['g']['mb'] < meta['file_bytes'] / 2 ** 20
    assert s['catchup']['h']['mb'] > blob_meta['file_bytes'] / 2 ** 20
    for key in ('b@100', 'b@500', 'a@100', 'a@500'):
        row = s['lag'][key]
        assert row['commits'] and not row['missing'] and not row['stale'], (
            key, row, text)
    for key in ('zrsd/1', 'zrsd/4', 'runzeo/1', 'runzeo/4'):
        assert s['reads'][key]['loads_per_s'], (key, text)
    for key in ('runzeo/1', 'zrsd-0/4', 'zrsd-1/1', 'zrsd-3/4'):
        assert s['commits'][key]['commits_per_s'], (key, text)
    memory = results['memory']
    assert memory['txn']['peak_rss_mb'] > 0, text
    assert memory['blob'].get('peak_rss_mb') or memory['blob']['skipped']
    names = {t['name'] for t in s['targets']}
    assert {'catchup_a_over_e', 'catchup_b_over_c', 'catchup_f_over_c',
            'catchup_g_over_c', 'catchup_f_mb_s', 'catchup_g_mb_s',
            'catchup_h_mb_s', 'lag_500_p99_ms',
            'reads_ratio', 'commits_1_ratio', 'commits_3_ratio',
            'memory_mb'} <= names, text
    for heading in ('1. Catch-up', '2. Lag', '3. Reads', '4. Commits',
                    '5. Memory', 'Targets'):
        assert heading in text
