"""The primary side: a zrsd primary with a real zrsd replica attached,
attacked by hostile secondaries (`primary_cases`) in batches; after each
batch a new commit must reach the replica, still on its first connection.
"""
import hashlib
import os
import random
import shutil
import struct
import sys
import traceback

import ZEO
import ZODB.FileStorage
from ZODB.utils import p64, u64, z64

from harness import peers, zczrs
from harness.history import copy_transaction, transactions
from harness.process import free_port, wait_until
from harness.stream import frame
from harness.zrsd_nodes import ZrsdNode
from zrsd import protocol as zrs

from . import primary_cases
from .judges import MAX_ERROR_LINE
from .logs import PORT, LogTail
from .nodes import IO_TIMEOUT, start_replica, started
from .primary_cases import RawSecondary, expect_from_primary
from .results import LaneAbort

PRIMARY_BATCH = 10                  # primary-side cases between commits
HANDSHAKE_TIMEOUT = 2               # the fuzzed primary's, seconds
SLOW_LORIS_AGE = 3                  # batches before a slow-loris is judged


class PrimarySide:
    """A zrsd primary, a legit zrsd replica, and hostile secondaries."""

    side = 'primary'

    def __init__(self, directory, seed, cases, summary, verbose=False,
                 keep=False):
        self.directory = directory
        self.keep = keep
        self.seed = seed
        self.cases = cases
        self.summary = summary
        self.verbose = verbose
        self.ports = set()
        self.primary = self.replica = self.client = self.log = None
        self.commits = 0
        self.slow = []   # (batch, RawSecondary) of slow-loris connections

    def say(self, text):
        if self.verbose:
            print('[primary] %s' % text, file=sys.stderr, flush=True)

    def violation(self, category, text):
        self.summary.violation(category, self.side, text)

    def run(self):
        try:
            self.setup()
            for batch in range(0, self.cases, PRIMARY_BATCH):
                self.batch(batch // PRIMARY_BATCH, range(
                    batch, min(self.cases, batch + PRIMARY_BATCH)))
            self.collect_slow(self.cases)
        except LaneAbort:
            pass
        except Exception:
            self.violation('setup', traceback.format_exc()[-2000:])
        finally:
            self.teardown()

    def setup(self):
        self.primary = started(ZrsdNode(
            os.path.join(self.directory, 'primary'), 'zrsd-primary',
            zrs_lines='  handshake-timeout %s\n' % HANDSHAKE_TIMEOUT))
        self.primary.start()
        zczrs.populate(self.primary.zeo_address, transactions=30,
                       undo_every=12)
        zeo_port = free_port()
        self.replica = start_replica(self.directory, zeo_port,
                                     self.primary.repl_port)
        self.replica_fs = os.path.join(self.directory, 'replica.fs')
        self.client = ZEO.client(('127.0.0.1', zeo_port), read_only=True,
                                 wait_timeout=IO_TIMEOUT)
        self.history, self.tids = {}, []
        self.load_history()
        peers.wait_for_tid(self.client, self.tids[-1],
                           [self.primary, self.replica], IO_TIMEOUT)
        self.log = LogTail(self.primary.log_path)
        self.replica_log = LogTail(self.replica.log_path)
        self.say('primary with %d transactions, replica following' % len(
            self.tids))

    def teardown(self):
        if self.client is not None:
            self.client.close()
        statuses = {}
        for name, proc in (('replica', self.replica),
                           ('primary', self.primary and self.primary.process)):
            if proc is None:
                continue
            if proc.popen.poll() is None:
                statuses[name] = proc.stop(IO_TIMEOUT)
                if statuses[name] != 0:
                    self.violation('daemon crashes', 'the %s exited with '
                                   'status %s on SIGTERM' % (
                                       name, statuses[name]))
            proc.close()
        if self.log is None:
            return
        self.log.poll()
        for record in self.log.records:
            port = PORT.search(record.message)
            if record.level == 'CRITICAL':
                self.violation('daemon crashes', 'CRITICAL: %s'
                               % record.line[:500])
            elif record.is_error and (
                    port is None or int(port.group(1)) not in self.ports):
                self.violation('log', 'ERROR about no hostile connection: '
                               '%s' % record.line[:500])
        if statuses.get('replica') == 0 and statuses.get('primary') == 0:
            primary = transactions(self.primary.fs_path)
            replica = transactions(self.replica_fs)
            if primary != replica:
                self.violation('partial/unchecked transactions',
                               'the replica file (%d transactions) differs '
                               'from the primary file (%d)' % (
                                   len(replica), len(primary)))
            elif self.summary.clean and not self.keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    # -- batches -----------------------------------------------------------

    def batch(self, number, cases):
        """Some cases, slow-loris connections on the side, then a commit
        that the legit replica must receive."""
        rng = random.Random('%s/primary/batch/%d' % (self.seed, number))
        self.summary.add(self.side, 'batches')
        for _ in range(rng.choice([0, 1, 1, 2])):
            conn = RawSecondary(self)
            conn.send(rng.choice([
                b'', b'\0', b'\0\0\0\x06zr', frame(b'zrs2.0'),
                frame(b'zrs2.0') + b'\0\0\0\x08\0\0']))
            self.slow.append((number, conn))
        # One more dribbles a 64-byte frame, a byte per case, never
        # completing it: the handshake timeout must still drop it.
        dribbler = RawSecondary(self)
        dribbler.send(struct.pack('>I', 64))
        dribbler.dribble = 63
        self.slow.append((number, dribbler))
        for case in cases:
            for _, conn in self.slow:
                if conn.dribble:
                    conn.dribble -= 1
                    conn.send(b'z')
            self.case(case)
        self.collect_slow(number - SLOW_LORIS_AGE)
        self.follow()

    def collect_slow(self, up_to):
        """Each slow-loris connection opened in batch `up_to` or before must
        be dropped with one ERROR.  (Collected a few batches later, so that
        nobody waits for the handshake timeout.)"""
        keep = []
        for opened, conn in self.slow:
            if opened > up_to:
                keep.append((opened, conn))
                continue
            if not conn.wait_closed():
                self.violation('hangs', 'a secondary that never completed '
                               'its handshake was not dropped')
                raise LaneAbort()
            conn.close()
            self.judge(conn, 'refuse', ('no handshake within',),
                       'slow-loris')
        self.slow = keep

    def follow(self):
        """Primary alive, a new commit reaches the replica, which is still
        on its first connection."""
        if not self.primary.running():
            self.primary.process.close()
            self.violation('daemon crashes', 'the primary exited with %s' %
                           self.primary.process.popen.returncode)
            raise LaneAbort()
        self.commits += 1
        tid = zczrs.commit_change(self.primary.zeo_address,
                                  'fuzz-%d' % self.commits, self.commits)
        self.load_history()
        try:
            peers.wait_for_tid(self.client, tid,
                               [self.primary, self.replica], IO_TIMEOUT)
        except AssertionError as exc:
            self.violation('replica following', str(exc)[:1000])
            raise LaneAbort()
        self.summary.add(self.side, 'followed')
        self.replica_log.poll()
        records = self.replica_log.records
        connected = [r for r in records if ': connected (' in r.message]
        dropped = [r for r in records if ': disconnected' in r.message
                   or r.is_error]
        if len(connected) != 1 or dropped:
            self.violation('replica following', 'the legit replica lost '
                           'its connection: %s' % ' | '.join(
                               r.line[:200] for r in dropped + connected))
            raise LaneAbort()

    # -- cases ---------------------------------------------------------------

    def case(self, number):
        rng = random.Random('%s/primary/%d' % (self.seed, number))
        kind = rng.choice(primary_cases.KINDS)
        self.summary.add(self.side, 'cases')
        primary_cases.RUN[kind](self, rng, kind)

    def some_tid(self, rng, valid=None):
        """A start tid: random bytes, or one at or below the last."""
        last = self.tids[-1]
        if valid is None:
            valid = rng.random() < 0.5
        if not valid:
            return rng.randbytes(8)
        return rng.choice([
            z64, last, rng.choice(self.tids), p64(u64(rng.choice(
                self.tids)) - 1), rng.randint(0, int.from_bytes(
                    last, 'big')).to_bytes(8, 'big')])

    def single(self, data, kind, verify=False, reset=False):
        expect, info = expect_from_primary(data, self.history)
        conn = RawSecondary(self)
        conn.send(data)
        if expect == 'refuse':
            if not conn.wait_closed():
                self.violation('hangs', '%s: the primary kept a connection '
                               'it should refuse (%s)' % (kind, info))
                raise LaneAbort()
        elif expect == 'stream' and verify:
            self.verify_stream(conn, info, kind)
        conn.close(reset)
        self.judge(conn, expect, info if expect == 'refuse' else None, kind)

    def load_history(self):
        """Read the primary's new transactions from its file (it is idle:
        this side commits only between batches)."""
        start = self.tids[-1] if self.history else None
        iterator = ZODB.FileStorage.FileIterator(self.primary.fs_path, start)
        try:
            for t in iterator:
                if t.tid not in self.history:
                    self.history[t.tid] = copy_transaction(t)
        finally:
            iterator.close()
        self.tids = sorted(self.history)

    def verify_stream(self, conn, start, kind):
        """The primary streams exactly its transactions after `start`, each
        as in its file, each with a correct checksum."""
        following = [t for t in self.tids if t > start]
        if not following:
            self.wait_log(conn, 'streaming transactions after %s'
                          % start.hex())
            return
        md5 = hashlib.md5(start)
        decoder = zrs.MessageDecoder()

        def payload():
            data = conn.next_frame()
            md5.update(data)
            return data

        try:
            for tid in following:
                begin = decoder.decode(payload())
                if not isinstance(begin, zrs.Begin) or begin.tid != tid:
                    raise zrs.ProtocolError('got %r where T %s was due' % (
                        begin, tid.hex()))
                records = []
                while True:
                    digest = md5.digest()
                    message_ = decoder.decode(payload())
                    if isinstance(message_, zrs.Commit):
                        break
                    if not isinstance(message_, zrs.Store) or \
                            message_.inline:
                        raise zrs.ProtocolError('got %r in %s' % (
                            message_, tid.hex()))
                    records.append((message_.oid, message_.tid,
                                    payload() or None, message_.data_txn))
                if message_.checksum != digest:
                    raise zrs.ProtocolError('bad checksum at %s' % tid.hex())
                got = (begin.tid, begin.status, begin.user,
                       begin.description, begin.extension, records)
                if got != self.history[tid]:
                    raise zrs.ProtocolError('transaction %s differs from the'
                                            ' file' % tid.hex())
            self.summary.add(self.side, 'streams verified')
            self.summary.add(self.side, 'transactions verified',
                             len(following))
        except (OSError, EOFError, zrs.ProtocolError) as exc:
            self.violation('streams', '%s: streaming after %s: %s' % (
                kind, start.hex(), exc))

    def wait_log(self, conn, text):
        try:
            wait_until(
                lambda: any(text in r.message for r in conn.records()),
                IO_TIMEOUT, message=text)
        except AssertionError as exc:
            self.violation('hangs', str(exc))
            raise LaneAbort()

    def judge(self, conn, expect, reason, kind):
        """One connection's log: it ended, with one ERROR naming `reason`
        if refused, none otherwise.

        `expect` is 'refuse' (`reason`: a tuple of texts, one of which the
        ERROR names), 'stream' (a complete handshake), 'incomplete' (we
        closed mid-handshake: if the handshake timeout fired before our
        close arrived, one ERROR saying so is right too) or
        'refuse-or-not' (we closed before the primary's history guard
        decided: one ERROR naming `reason`, or none).
        """
        self.wait_log(conn, ': disconnected')
        records = conn.records()
        errors = [r for r in records if r.is_error]
        if expect == 'refuse-or-not':
            expect = 'refuse' if errors else 'stream'
        if expect == 'refuse' and not errors:
            # The same history refused again from this host within a few
            # minutes is an INFO line (see zrsd.primary.server).
            errors = [r for r in records
                      if 'secondary refused again' in r.message]
        for record in errors:
            if len(record.line) > MAX_ERROR_LINE:
                self.violation('log', '%s: ERROR line of %d characters'
                               % (kind, len(record.line)))
        if expect == 'incomplete' and len(errors) == 1 and \
                'no handshake within' in errors[0].message:
            expect, reason = 'refuse', ('no handshake within',)
        if expect == 'refuse':
            if len(errors) != 1 or not any(
                    text in errors[0].message for text in reason):
                self.violation('log', '%s: expected one ERROR naming one of '
                               '%r, got: %s' % (kind, reason, ' | '.join(
                                   r.line[:300] for r in errors) or 'none'))
            else:
                self.summary.add(self.side, 'refused')
                self.summary.reason(self.side, errors[0].message)
        else:
            self.summary.add(self.side, 'not refused')
            if errors:
                self.violation('log', '%s: ERROR for a connection that '
                               'broke no rule: %s' % (kind, ' | '.join(
                                   r.line[:300] for r in errors)))
