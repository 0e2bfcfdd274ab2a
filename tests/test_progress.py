"""Catch-up progress lines, with an injected clock and logger."""
from zrsd.daemon.progress import Progress

from harness.history import pack_stop_tid as tid_at  # a tid at a time


class Log(list):
    def info(self, message, *args):
        self.append(message % args)


def test_progress_and_caught_up():
    now = [1_700_000_000.0]
    log = Log()
    progress = Progress('<zrs 1>', clock=lambda: now[0], log=log)
    progress.tick()  # nothing applied: silent
    assert log == []
    for i in range(100):
        progress.committed(tid_at(now[0] - 3600 + i), 10_000)
    now[0] += 10
    progress.tick()
    (line,) = log
    assert line.startswith('<zrs 1>: applied 100 transactions (1.0 MB) in '
                           '10.0s, 10 txn/s, 0.10 MB/s; at ')
    assert 'behind; total 100 transactions, 1.0 MB' in line
    behind = float(line.split(', ')[-2].split('s behind')[0].split()[-1])
    assert 3500 < behind < 3520
    assert progress.rate == 10.0
    now[0] += 10
    progress.tick()  # the stream went idle: one "caught up" line
    assert log[1].startswith('<zrs 1>: caught up at ')
    assert progress.rate == 0.0
    now[0] += 10
    progress.tick()
    assert len(log) == 2
