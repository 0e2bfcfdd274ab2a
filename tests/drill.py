"""The failover drill (`make drill`, README "Development"): the runbook
end to end with three real zrsd nodes and the real operator commands.
A primary, B (behind a throttled link) and C its replicas; a planned
switchover A -> B under load, then an unplanned failover B -> C after
LOST commits C never received, by which A and B are rewound.
"""
import argparse
import contextlib
import filecmp
import logging
import os
import re
import shutil
import signal
import sys
import time

from harness.chaos import ChaosProxy
from harness.history import transactions
from harness.process import LOG_FORMAT, ROOT, run, stop_all, wait_until
from harness.zczrs import commit_change
from harness.zrsd_nodes import Writer, ZrsdNode, blob_files
from zrsd.daemon import promotion

WAIT = 60.0         # seconds before a wait counts as a failure
THROTTLE = 150000   # bytes/s of B's link in the set-up: B lags
BEFORE_STOP = 150   # commits on A before it is stopped
BEFORE_STALL = 30   # commits on B before C's link is stalled
LOST = 5            # commits on B that C never receives

# zrsd-rewind's (would) remove lines, indented as the drill shows them too.
REMOVED = re.compile(r'^ *(would remove|removed) ([0-9a-f]{16}) \(', re.M)


class DrillFailed(Exception):
    """A step did not hold; the message says why."""


def check(condition, reason):
    if not condition:
        raise DrillFailed(reason)


def removed_tids(output):
    """The tids zrsd-rewind's `output` says it (would) remove."""
    return [bytes.fromhex(tid) for _, tid in REMOVED.findall(output)]


def hexes(tids):
    return ' '.join(tid.hex() for tid in tids)


class Drill:
    """The three nodes, the proxies, the steps run and their results."""

    def __init__(self, workdir, blobs=False):
        self.workdir, self.blobs = workdir, blobs
        self.steps = []          # (phase, name, seconds, result)
        self.phase, self.proxies = '', []
        self.lost_planned = self.lost_unplanned = None
        # Each with a replicate-to; B and C get their upstream at start.
        self.nodes = [ZrsdNode(os.path.join(workdir, name), name, serve=True,
                               blobs=blobs) for name in 'abc']

    def proxy(self, target_port, **kw):
        self.proxies.append(ChaosProxy(target_port, **kw))
        return self.proxies[-1]

    def writer(self, node, count):
        """A `Writer` on `node` once it made `count` commits."""
        cache = os.path.join(self.workdir, 'client-blobs-' + node.name)
        writer = Writer(node, 'writer-' + node.name,
                        cache if self.blobs else None).start()
        self.writes(writer, count)
        return writer

    def writes(self, writer, count):
        """Wait for `count` more commits; the writer must not fail."""
        target = len(writer.tids) + count
        wait_until(lambda: writer.node.check_alive() and (
            len(writer.tids) >= target or not writer.running()), WAIT,
            message='%d commits on %s' % (count, writer.node.name.upper()))
        check(writer.error is None, 'the writer failed: %r' % writer.error)

    @contextlib.contextmanager
    def step(self, name):
        """Time a step; its body sets `outcome[0]` to the result text."""
        outcome, shown, began = ['ok'], None, time.monotonic()
        try:
            yield outcome
        except BaseException as exc:
            shown = 'FAILED'
            outcome[0] = 'FAILED: ' + (str(exc).splitlines()[0] if str(exc)
                                       else repr(exc))
            raise
        finally:
            seconds = time.monotonic() - began
            self.steps.append((self.phase, name, seconds, outcome[0]))
            print('  %7.2fs  %s: %s' % (seconds, name, shown or outcome[0]),
                  flush=True)

    def command(self, *args):
        """Run an operator command, showing its output; it must exit 0."""
        print('    $ %s' % ' '.join(args), flush=True)
        done = run(*args, status=None, timeout=300)
        for line in (done.stdout + done.stderr).splitlines():
            print('      ' + line)
        check(done.returncode == 0, '%s exited with %d' % (
            args[0], done.returncode))
        return done

    def summary(self):
        row = '  %-8s %-52s %9s  %s'
        lines = ['', '==== zrsd failover drill ====',
                 row % ('phase', 'step', 'time (s)', 'result')]
        lines += [row % (phase, name, '%.2f' % seconds, result)
                  for phase, name, seconds, result in self.steps]
        for what, lost in (('planned switchover', self.lost_planned),
                           ('unplanned failover', self.lost_unplanned)):
            if lost is not None:
                lines.append('lost in the %s: %s' % (what, (
                    '%d transactions: %s' % (len(lost), hexes(lost))
                    if lost else 'none')))
        return '\n'.join(lines)

    def log_tails(self, count=25):
        """Print the end of each node's log, but ZEO's INFO lines."""
        for node in self.nodes:
            if node.process is not None:
                lines = [line for line in node.log().splitlines()
                         if ' INFO ZEO.' not in line][-count:]
                print('\n---- last %d lines of %s ----\n%s' % (
                    len(lines), node.log_path, '\n'.join(lines)))

    def close(self):
        for item in self.proxies + self.nodes:
            item.close()

    def promote(self, node):
        done = self.command('zrsdctl', '-C', node.config_path, 'promote')
        check('promoted to primary' in done.stdout,
              'zrsdctl promote did not confirm: %s' % done.stdout.strip())

    def rewind(self, node, *options, lost=None):
        """zrsd-rewind of a stopped node: it (would) remove exactly `lost`."""
        lost = self.lost_unplanned if lost is None else lost
        done = self.command('zrsd-rewind', '-C', node.config_path, *options)
        removed = removed_tids(done.stdout)
        check(removed == lost, 'zrsd-rewind %s on %s: %s, not the %d lost'
              % (' '.join(options), node.name.upper(), hexes(removed),
                 len(lost)))
        return done.stdout if not lost else '%s %d transactions' % (
            'would remove' if options else 'removed', len(removed))

    def follow(self, primary, *replicas):
        """Commit on `primary`; wait until each replica has it."""
        tid = commit_change(primary.zeo_address, 'drill-check', time.time())
        for replica in replicas:
            replica.wait_for_tid(tid, WAIT)
        return tid

    def all_follow(self, primary, *replicas):
        """Steps: a commit on `primary` reaches `replicas`; zrsd-verify."""
        names = [node.name.upper() for node in (primary,) + replicas]
        with self.step('commit on %s; %s follow' % (
                names[0], ' and '.join(names[1:]))) as out:
            out[0] = 'at %s' % self.follow(primary, *replicas).hex()
        for replica, name in zip(replicas, names[1:]):
            with self.step('zrsd-verify %s %s' % (names[0], name)) as out:
                out[0] = self.command(
                    'zrsd-verify', primary.zeo_arg,
                    replica.zeo_arg).stdout.splitlines()[0]

    def run(self):
        a, b, c = self.nodes
        self.phase = 'set-up'
        with self.step('start A (primary), B and C (replicas of A)'):
            a.start()
            # (An empty replica serves ZEO once it has a transaction.)
            commit_change(a.zeo_address, 'drill-check', time.time())
            # A small socket buffer: the throttle holds A's sender back.
            b_link = self.proxy(a.repl_port, socket_buffer=32768)
            b_link.throttle(THROTTLE)
            b.upstream, c.upstream = b_link.port, a.repl_port
            b.start()
            c.start()
        with self.step('writer commits to A; B lags behind its link') as out:
            writer = self.writer(a, BEFORE_STOP)
            out[0] = '%d commits' % len(writer.tids)
        self.phase = 'planned'
        with self.step('stop A (SIGTERM) while the writer commits') as out:
            b_before = b.last_tid()
            behind = len([t for t in writer.tids if t > b_before])
            began = time.monotonic()
            a.stop(WAIT * 2)
            stop_time = time.monotonic() - began
            # B's link leads nowhere now.  (A proxy that accepts B but
            # cannot reach A would look to B as if A refused it.)
            b_link.close()
            writer.stop()
            last = transactions(a.fs_path)[-1][0]
            check('every secondary received the last commit %s'
                  % last.hex() in a.log(), "A's log does not say every "
                  "secondary received %s" % last.hex())
            check(writer.error is not None, 'the writer never saw A stop')
            out[0] = ('A exited in %.2fs, B was %d commits behind; A '
                      'handed over up to %s; the writer stopped on %s' % (
                          stop_time, behind, last.hex(),
                          type(writer.error).__name__))
        with self.step('check B and C hold A\'s last transaction') as out:
            b_last, c_last = b.last_tid(), c.last_tid()
            check(b_last == last and c_last == last,
                  'A ended at %s, B at %s, C at %s' % (
                      last.hex(), b_last.hex(), c_last.hex()))
            b_tids = set(t[0] for t in transactions(b.fs_path))
            self.lost_planned = [t for t in writer.tids if t not in b_tids]
            check(not self.lost_planned, 'acknowledged commits missing on '
                  'B: %s' % hexes(self.lost_planned))
            out[0] = 'lost: nothing (%d acknowledged commits, last %s)' % (
                len(writer.tids), last.hex())
        with self.step('promote B: zrsdctl promote'):
            self.promote(b)
        with self.step('point C at B (restart C)'):
            c.stop(WAIT)
            # C's link to B goes through a proxy: step 3 stalls it.
            c_link = self.proxy(b.repl_port)
            c.upstream = c_link.port
            c.start()
        with self.step('A as a replica of B: zrsd-rewind --dry-run') as out:
            a.upstream = b.repl_port
            a.write_config()
            check('nothing to rewind' in self.rewind(a, '--dry-run', lost=[]),
                  'zrsd-rewind --dry-run does not say "nothing to rewind"')
            out[0] = 'nothing to rewind'
        with self.step('start A as a replica of B'):
            a.start()
        self.all_follow(b, a, c)
        self.phase = 'unplanned'
        with self.step('writer commits to B; A and C follow') as out:
            writer = self.writer(b, BEFORE_STALL)
            writer.pause()
            shared = b.last_tid()
            a.wait_for_tid(shared, WAIT)
            c.wait_for_tid(shared, WAIT)
            out[0] = '%d commits, last %s' % (len(writer.tids), shared.hex())
        with self.step('stall C\'s link; B commits more') as out:
            c_link.stall()
            before = len(writer.tids)
            writer.resume()
            self.writes(writer, LOST)
            writer.stop()
            check(writer.error is None, 'the writer failed: %r'
                  % writer.error)
            after_stall = writer.tids[before:]
            a.wait_for_tid(after_stall[-1], WAIT)
            check(c.last_tid() == shared, 'C went on past %s through a '
                  'stalled link' % shared.hex())
            out[0] = '%d commits; A has them, C stays at %s' % (
                len(after_stall), shared.hex())
        with self.step('kill B (SIGKILL: host failure)'):
            b.process.kill()
            self.lost_unplanned = [t[0] for t in transactions(b.fs_path)
                                   if t[0] > shared]
            check(self.lost_unplanned == after_stall,
                  "B's transactions after C's last %s are %s, not the %d "
                  "committed after the stall" % (
                      shared.hex(), len(self.lost_unplanned), LOST))
        with self.step('promote C: zrsdctl promote'):
            self.promote(c)
            c_link.close()
        with self.step('commit on C') as out:
            out[0] = 'at %s' % self.follow(c).hex()
        with self.step('point A at C: refused (it has B\'s last commits)'):
            a.stop(WAIT)
            a.upstream = c.repl_port
            a.start()
            a.wait_for_log('refused: the primary closed the link', WAIT)
            check('secondary refused' in c.log(),
                  "C's log does not say it refused A")
        with self.step('stop A; zrsd-rewind') as out:
            a.stop(WAIT)
            out[0] = self.rewind(a)
        with self.step('start A as a replica of C'):
            a.start()
        with self.step('B as a replica of C: zrsd-rewind --dry-run') as out:
            # Undo B's promotion (as its log says): stopped, record gone.
            os.remove(promotion.record_path(b.fs_path))
            b.upstream = c.repl_port
            b.write_config()
            out[0] = self.rewind(b, '--dry-run')
        with self.step('zrsd-rewind B') as out:
            out[0] = self.rewind(b)
        with self.step('start B as a replica of C'):
            b.start()
        self.all_follow(c, a, b)
        with self.step('stop all; A, B and C byte-identical') as out:
            stop_all(a, b, c)
            for replica in (a, b):
                check(filecmp.cmp(c.fs_path, replica.fs_path, shallow=False),
                      '%s differs from %s' % (replica.fs_path, c.fs_path))
                check(not self.blobs or blob_files(c.blob_dir) ==
                      blob_files(replica.blob_dir),
                      "the blob files of %s differ from C's"
                      % replica.name.upper())
            out[0] = 'Data.fs%s identical, %d transactions' % (
                ' and blob files' if self.blobs else '',
                len(transactions(c.fs_path)))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Run the README failover runbook end to end with real '
        'zrsd processes on 127.0.0.1 and report each step.')
    parser.add_argument('--workdir', help='work directory, recreated '
                        '(default var/drill)',
                        default=os.path.join(ROOT, 'var', 'drill'))
    parser.add_argument('--keep', action='store_true',
                        help='keep the work directory after a clean run')
    parser.add_argument('--blobs', action='store_true', help='nodes with '
                        'blob directories; the writers commit blobs too')
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    # The writers' ZEO clients log disconnections: to a file.
    logging.basicConfig(filename=os.path.join(workdir, 'drill-clients.log'),
                        level=logging.INFO, format=LOG_FORMAT)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
    print('zrsd failover drill%s; work directory %s' % (
        ' with blobs' if args.blobs else '', workdir), flush=True)
    drill, began, failure = Drill(workdir, args.blobs), time.monotonic(), None
    try:
        drill.run()
    except (DrillFailed, AssertionError) as exc:
        failure = str(exc) or type(exc).__name__
    except Exception as exc:
        failure = '%s: %s' % (type(exc).__name__, exc)
    finally:
        drill.close()
    if failure is not None:
        drill.log_tails()
    print(drill.summary())
    print('time: %.1fs' % (time.monotonic() - began))
    if failure is not None:
        print('result: FAILED: %s\nwork directory kept: %s' % (
            failure.splitlines()[0], workdir))
        return 1
    print('result: OK')
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
