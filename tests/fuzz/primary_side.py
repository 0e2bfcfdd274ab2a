"""The primary side: a zrsd primary with a real zrsd replica attached,
attacked by hostile secondaries in batches (the case kinds, `KINDS`); after
each batch a new commit must reach the replica, on its first connection."""
import contextlib
import hashlib
import os
import random
import shutil
import socket
import struct

from ZODB.utils import p64, u64, z64

from harness import peers, stream, zczrs
from harness.history import transactions, transactions_from
from harness.process import LogTail, wait_until
from harness.stream import Stream, frame, read_frames
from harness.zrsd_nodes import ZrsdNode
from zrsd import protocol as zrs

from .judges import UNCHECKED, Lane
from .nodes import IO_TIMEOUT, Replica, started, stop

PRIMARY_BATCH = 10                  # primary-side cases between commits
HANDSHAKE_TIMEOUT = 2               # the fuzzed primary's, seconds
SLOW_LORIS_AGE = 3                  # batches before a slow-loris is judged


def expect_from_primary(data, tids):
    """What a zrsd primary (no blobs, never packed, transactions `tids`)
    does with `data` from a new secondary that then waits: ('refuse',
    texts one of which the ERROR names), ('stream', start_tid) or
    ('incomplete', None).

    The rules: frames of at most 64 bytes; a protocol name; an 8-byte tid
    that is zero or one of `tids` (the history guard); then only empty
    frames.  The history guard runs in the primary's streamer thread, so a
    violation that follows a refused tid may be the one named instead.
    """
    pos, phase, start, forked = 0, 'protocol', None, ()
    while len(data) - pos >= 4:
        (n,) = struct.unpack_from('>I', data, pos)
        if n > 64:
            return 'refuse', forked + ('frame of %d bytes is too large' % n,)
        if len(data) - pos - 4 < n:
            break
        payload = data[pos + 4:pos + 4 + n]
        pos += 4 + n
        if phase == 'protocol':
            if payload not in zrs.PROTOCOLS:
                return 'refuse', ('unknown protocol',)
            phase = 'tid'
        elif phase == 'tid':
            if len(payload) != 8:
                return 'refuse', ('start tid of %d bytes' % len(payload),)
            if payload != z64 and payload not in tids:
                forked = ('its last transaction %s is not in this storage'
                          % payload.hex(),)
            phase, start = 'stream', payload
        elif payload:
            return 'refuse', forked + (
                'unexpected %d-byte message after the handshake'
                % len(payload),)
    if forked:
        return 'refuse', forked
    return ('stream', start) if phase == 'stream' else ('incomplete', None)


class RawSecondary(stream.RawSecondary):
    """A raw socket to the primary's replication port, counted."""

    def __init__(self, side, data=b''):
        self.side = side
        self.dribble = 0     # bytes still to send, one per case (slow-loris)
        super().__init__(side.primary, data, IO_TIMEOUT, side.log)
        side.ports.add(self.port)
        side.add('connections')

    def wait_closed(self, what):
        """Read until the primary closes; if it does not: a hang (`what`
        it should have dropped)."""
        try:
            super().wait_closed()
        except socket.timeout:
            raise self.side.abort('hangs', 'the primary kept %s' % what)


def handshake(side, rng, valid=None):
    return frame(rng.choice(zrs.PROTOCOLS)) + frame(side.some_tid(rng, valid))


def random_bytes(side, rng, kind):
    data = rng.randbytes(rng.randint(1, 120))
    if rng.random() < 0.5:
        data = b'\0\0\0' + bytes([rng.randint(0, 70)]) + data
    side.single(data, kind)


def random_frames(side, rng, kind):
    side.single(b''.join(frame(rng.choice([
        b'zrs2.0', b'zrs2.1', b'zrs2.0\0', b'ZRS2.0', b'', rng.randbytes(8),
        side.some_tid(rng), rng.randbytes(rng.randint(0, 80))]))
        for _ in range(rng.randint(1, 5))), kind, verify=True)


def random_tid(side, rng, kind):
    side.single(handshake(side, rng) + frame(b'') * rng.choice([0, 0, 1, 3]),
                kind, verify=True)


def junk_after_handshake(side, rng, kind):
    data = handshake(side, rng, True) + frame(b'') * rng.randint(0, 3)
    side.single(data + (frame(rng.randbytes(rng.randint(1, 64)))
                        if rng.random() < 0.8 else struct.pack(
                            '>I', rng.randint(65, (1 << 32) - 1))), kind)


def keepalives_partial(side, rng, kind):
    data = handshake(side, rng, True) + frame(b'') * rng.randint(0, 5)
    data += rng.choice([b'\0', b'\0\0\0', b'\0\0\0\x05ab'])
    side.single(data, kind, verify=True, reset=rng.random() < 0.5)


def oversized_first(side, rng, kind):
    side.single(struct.pack('>I', rng.randint(65, (1 << 32) - 1))
                + rng.randbytes(rng.randint(0, 50)), kind)


def half_close(side, rng, kind):
    data = frame(rng.choice(zrs.PROTOCOLS))
    if rng.random() < 0.7:
        data += frame(side.some_tid(rng, valid=True))
    conn = RawSecondary(side, data)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    conn.wait_closed('a half-closed connection (%s)' % kind)
    conn.close()
    side.judge(conn, *expect_from_primary(data, side.history), kind,
               racy=True)


def reset_mid_stream(side, rng, kind):
    conn = RawSecondary(side, frame(b'zrs2.0') + frame(z64))
    read_frames(conn, rng.randint(1, 20), IO_TIMEOUT)
    conn.close(reset=True)
    side.judge(conn, 'stream', None, kind)


def storm(side, rng, kind):
    actions = ['close', 'reset', 'partial', 'partial-reset',
               'handshake', 'handshake-reset', 'refuse']
    conns = [(RawSecondary(side), rng.choice(actions))
             for _ in range(rng.randint(5, 40))]
    sent = {}
    for conn, action in conns:
        if action.startswith('partial'):
            sent[conn] = frame(b'zrs2.0')[:rng.randint(1, 9)]
        elif action.startswith('handshake'):
            sent[conn] = frame(b'zrs2.0') + frame(
                side.some_tid(rng, valid=True))
        else:
            sent[conn] = frame(b'zrs9.9') if action == 'refuse' else b''
        conn.try_send(sent[conn])
    for conn, action in conns:
        if action == 'refuse':
            conn.wait_closed('a refused connection (storm)')
        conn.close(reset=action.endswith('reset'))
    for conn, action in conns:   # (only a handshake's history guard races)
        side.judge(conn, *expect_from_primary(sent[conn], side.history),
                   kind, racy=action.startswith('handshake'))


# The case kinds (named after what runs them), each as often as its weight.
KINDS = [(run.__name__.replace('_', '-'), run) for run, weight in (
    (random_bytes, 2), (random_frames, 2), (random_tid, 3),
    (junk_after_handshake, 2), (keepalives_partial, 1), (oversized_first, 1),
    (half_close, 1), (reset_mid_stream, 1), (storm, 1))
    for _ in range(weight)]


class PrimarySide(Lane):
    """A zrsd primary, a legit zrsd replica, and hostile secondaries, in
    batches of `PRIMARY_BATCH` cases."""

    side = name = 'primary'

    def __init__(self, directory, seed, summary, verbose=False, keep=False):
        self.directory, self.seed, self.summary = directory, seed, summary
        self.verbose, self.keep = verbose, keep
        self.ports, self.commits, self.history = set(), 0, {}
        self.primary = self.replica = self.client = self.log = None
        self.slow = []   # (batch, RawSecondary) of slow-loris connections

    def open(self):
        self.primary = ZrsdNode(
            os.path.join(self.directory, 'primary'), 'zrsd-primary',
            register=started,
            zrs_lines='  handshake-timeout %s\n' % HANDSHAKE_TIMEOUT).start()
        zczrs.populate(self.primary.zeo_address, transactions=30,
                       undo_every=12)
        self.replica = Replica(self.directory,
                               self.primary.repl_port).launch()
        self.client = self.replica.client(wait_timeout=IO_TIMEOUT)
        self.follow(commit=False)
        self.log = LogTail(self.primary.log_path)
        self.replica_log = LogTail(self.replica.log_path)
        self.say('primary with %d transactions, replica following' % len(
            self.tids))

    def close(self):
        if self.client is not None:
            self.client.close()
        statuses = [stop(self, name, process)
                    for name, process in (
                        ('replica', self.replica and self.replica.process),
                        ('primary', self.primary and self.primary.process))
                    if process is not None]
        if self.log is None:
            return
        self.scan_log(self.log, lambda index, record: record.port in
                      self.ports, 'ERROR about no hostile connection')
        if statuses == [0, 0]:
            primary = transactions(self.primary.fs_path)
            replica = transactions(self.replica.fs_path)
            if primary != replica:
                self.violation(UNCHECKED, 'the replica file (%d '
                               'transactions) differs from the primary file '
                               '(%d)' % (len(replica), len(primary)))
            elif self.summary.clean and not self.keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    def run_case(self, case):
        """A batch begins with slow-loris connections on the side, and ends
        with a commit that the legit replica must receive."""
        batch, last = case // PRIMARY_BATCH, case == self.count - 1
        if case % PRIMARY_BATCH == 0:
            rng = random.Random('%s/primary/batch/%d' % (self.seed, batch))
            self.add('batches')
            for _ in range(rng.choice([0, 1, 1, 2])):
                self.slow.append((batch, RawSecondary(self, rng.choice([
                    b'', b'\0', b'\0\0\0\x06zr', frame(b'zrs2.0'),
                    frame(b'zrs2.0') + b'\0\0\0\x08\0\0']))))
            # One more dribbles a 64-byte frame, a byte per case, never
            # completing it: the handshake timeout must still drop it.
            self.slow.append((batch, RawSecondary(self, struct.pack(
                '>I', 64))))
            self.slow[-1][1].dribble = 63
        for _, conn in self.slow:
            if conn.dribble:
                conn.dribble -= 1
                conn.try_send(b'z')
        rng = random.Random('%s/primary/%d' % (self.seed, case))
        kind, run = rng.choice(KINDS)
        run(self, rng, kind)
        if case % PRIMARY_BATCH == PRIMARY_BATCH - 1 or last:
            self.collect_slow(batch - SLOW_LORIS_AGE)
            self.follow()
            if last:
                self.collect_slow(batch)

    def collect_slow(self, up_to):
        """Each slow-loris connection opened in batch `up_to` or before must
        be dropped with one ERROR (a few batches later, so that nobody
        waits for the handshake timeout)."""
        for _, conn in [s for s in self.slow if s[0] <= up_to]:
            conn.wait_closed('a secondary that never completed its '
                             'handshake')
            conn.close()
            self.judge(conn, 'refuse', ('no handshake within',),
                       'slow-loris')
        self.slow = [s for s in self.slow if s[0] > up_to]

    def follow(self, commit=True):
        """Primary alive, a new commit reaches the replica, which is still
        on its first connection; the history is read again."""
        if not self.primary.running():
            self.primary.process.close()
            raise self.abort('daemon crashes', 'the primary exited with %s'
                             % self.primary.process.popen.returncode)
        if commit:
            self.commits += 1
            self.primary.commit('fuzz-%d' % self.commits, self.commits)
        # (The primary is idle: this side commits only between batches.)
        for t in transactions_from(self.primary.fs_path,
                                   self.tids[-1] if self.history else None):
            self.history.setdefault(t.tid, t)
        self.tids = sorted(self.history)
        try:
            peers.wait_for_tid(self.client, self.tids[-1],
                               [self.primary, self.replica], IO_TIMEOUT)
        except AssertionError as exc:
            raise self.abort('replica following', str(exc)[:1000])
        if not commit:
            return
        self.add('followed')
        records = self.replica_log.poll()
        connected = [r for r in records if ': connected (' in r.message]
        dropped = [r for r in records if ': disconnected' in r.message
                   or r.is_error]
        if len(connected) != 1 or dropped:
            raise self.abort('replica following', 'the legit replica lost '
                             'its connection: %s' % ' | '.join(
                                 r.line[:200] for r in dropped + connected))

    def some_tid(self, rng, valid=None):
        """A start tid: random bytes, or one at or below the last."""
        last = self.tids[-1]
        if valid is None:
            valid = rng.random() < 0.5
        if not valid:
            return rng.randbytes(8)
        return rng.choice([z64, last, rng.choice(self.tids), p64(u64(
            rng.choice(self.tids)) - 1), p64(rng.randint(0, u64(last)))])

    def single(self, data, kind, verify=False, reset=False):
        expect, info = expect_from_primary(data, self.history)
        conn = RawSecondary(self, data)
        if expect == 'refuse':
            conn.wait_closed('a connection it should refuse (%s: %s)' % (
                kind, info))
        elif expect == 'stream' and verify:
            self.verify_stream(conn, info, kind)
        conn.close(reset)
        self.judge(conn, expect, info, kind)

    def verify_stream(self, conn, start, kind):
        """The primary streams exactly its transactions after `start`, each
        message as `Stream` sends it from the file (decoded: the pickles of
        an extension may differ), each with a correct checksum."""
        following = [t for t in self.tids if t > start]
        if not following:
            return self.wait_log(conn, 'streaming transactions after %s'
                                 % start.hex())
        due = Stream(start)
        for tid in following:
            due.transaction(self.history[tid])
        got = read_frames(conn, len(due.frames), IO_TIMEOUT)
        md5, decoder = hashlib.md5(start), zrs.MessageDecoder()
        try:
            for n, ((what, want), data) in enumerate(zip(due.frames, got)):
                message = data if what == 'data' else decoder.decode(data)
                want = (want if what == 'data' else zrs.Commit(md5.digest())
                        if what == 'C' else decoder.decode(want))
                if type(message) is not type(want) or message != want:
                    raise zrs.ProtocolError('frame %d: got %.200r where '
                                            '%.200r was due' % (n, message,
                                                                want))
                md5.update(data)
            if len(got) < len(due.frames):
                raise EOFError('the primary closed the connection after %d '
                               'of %d frames' % (len(got), len(due.frames)))
            self.add('streams verified')
            self.add('transactions verified', len(following))
        except (OSError, EOFError, zrs.ProtocolError) as exc:
            self.violation('streams', '%s: streaming after %s: %s' % (
                kind, start.hex(), exc))

    def wait_log(self, conn, text):
        try:
            wait_until(lambda: any(text in r.message
                                   for r in conn.records()),
                       IO_TIMEOUT, message=text)
        except AssertionError as exc:
            raise self.abort('hangs', str(exc))

    def judge(self, conn, expect, reason, kind, racy=False):
        """One connection's log: it ended, with one ERROR naming one of the
        texts `reason` if refused, none otherwise.  `expect` is 'refuse',
        'stream' (a complete handshake) or 'incomplete' (we closed
        mid-handshake: if the handshake timeout fired before our close
        arrived, one ERROR saying so is right too).  `racy`: we closed
        before the primary's history guard decided, so a refusal is
        right, and so is none."""
        self.wait_log(conn, ': disconnected')
        records = conn.records()
        errors = [r for r in records if r.is_error]
        if racy and expect == 'refuse' and not errors:
            expect = 'stream'
        if expect == 'refuse' and not errors:
            # The same history refused again from this host within a few
            # minutes is an INFO line (see zrsd.primary.connection).
            errors = [r for r in records
                      if 'secondary refused again' in r.message]
        for record in errors:
            self.check_length(record.line, kind='%s: ' % kind)
        if expect == 'incomplete' and len(errors) == 1 and \
                'no handshake within' in errors[0].message:
            expect, reason = 'refuse', ('no handshake within',)
        lines = ' | '.join(r.line[:300] for r in errors)
        if expect != 'refuse':
            self.add('not refused')
            if errors:
                self.violation('log', '%s: ERROR for a connection that '
                               'broke no rule: %s' % (kind, lines))
        elif len(errors) != 1 or not any(
                text in errors[0].message for text in reason):
            self.violation('log', '%s: expected one ERROR naming one of %r, '
                           'got: %s' % (kind, reason, lines or 'none'))
        else:
            self.add('refused')
            self.summary.reason(self.side, errors[0].message)
