"""The copy lanes: a new replica copies its primary's file (zrsd-seed1)
from a fake primary that answers with a case (`copy_cases`): in this
process (`copy_file`, on a unix socket), or a real ``zrsd`` replica per
case, which then replicates the rest of the source with ZRS.

After each case, the judges: the kept bytes are exactly the valid file's
first `Case.expected` bytes (more is an unchecked transaction, less a lost
one); no ``Data.fs.seeding``; the blob files of the kept transactions in
place, no other, no temporary one; no hostile pickle ran; no ERROR, no
traceback; nothing raised out of `copy_file`, within `HANG` seconds.
"""
import contextlib
import logging
import os
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from ZODB.blob import FilesystemHelper
from ZODB.utils import z64

from harness.process import wait_until
from harness.stream import Reader, frame, replay
from harness.zrsd_nodes import ZrsdNode
from zrsd import seedprotocol as seed
from zrsd.replica import seeding

from .judges import UNCHECKED, Lane
from .nodes import started

HANG = 20.0            # seconds a copy (or a ZRS handshake) may take


class _Serve(socketserver.BaseRequestHandler):
    """Each connection to the fake primary goes to its lane's `serve`."""

    def handle(self):
        self.server.lane.serve(self.request)


class CopyLane(Lane):
    """Cases to new replicas from a fake primary, the `server` of
    `listen()`: it serves zrsd-seed1 connections the current `case` (and
    records what they said, `seen`), ZRS ones the source after the tid they
    name (`zrs_tids`)."""

    server = None

    def __init__(self, cases, directory, summary, verbose=False):
        self.cases, self.cs, self.source = cases, cases.cs, cases.cs.source
        self.directory, self.summary = directory, summary
        self.verbose, self.seen, self.zrs_tids = verbose, [], []
        self.stopped = threading.Event()

    def open(self):
        self.server = self.listen()
        self.server.lane, self.server.daemon_threads = self, True
        threading.Thread(target=self.server.serve_forever, args=(0.1,),
                         daemon=True).start()

    def close(self):
        if self.server is not None:
            self.stopped.set()
            self.server.shutdown()
            self.server.server_close()

    def serve(self, sock):
        deadline, reader = time.monotonic() + HANG, Reader(sock, self.stopped)
        hello = reader.frames(2, HANG)
        if len(hello) == 2 and hello[0] == seed.PROTOCOL_SEED:
            with contextlib.suppress(OSError):
                sock.sendall(self.case.wire)
                sock.shutdown(socket.SHUT_WR)
            # What the replica says after its query (its proof), until
            # it closes: a replica that keeps the connection is a hang.
            self.seen.append(hello + reader.frames(
                10, deadline - time.monotonic()))
        elif len(hello) == 2:
            self.zrs_tids.append(hello[1])
            with contextlib.suppress(OSError):
                sock.sendall(b''.join(map(frame, replay(self.source.txns)(
                    hello[1]))))
                reader.drain()

    def run_case(self, number):
        case = self.case = self.cases.case(number)
        del self.seen[:], self.zrs_tids[:]
        if self.copy(case) is not False:
            self.add('kept all' if case.expected == len(case.data)
                     else 'kept part')

    def check_copy(self, case, path, blob_dir, kept):
        """Judge a case's outcome: `kept` bytes of the file at `path` (None:
        the file's size), the blob files, the marker, what the replica
        sent."""
        if kept is None:
            kept = os.path.getsize(path) if os.path.exists(path) else 0
        if not case.lowest <= kept <= case.highest:
            self.violation(UNCHECKED if kept > case.highest else
                           'lost valid transactions', 'kept %d bytes (%s a '
                           'transaction end)' % (kept, 'at' if kept in
                                                 self.cs.boundaries else
                                                 'not at'), case)
        if os.path.exists(path) and \
                Path(path).read_bytes()[:kept] != case.data[:kept]:
            self.violation(UNCHECKED, "the kept bytes differ from the "
                           "primary's file", case)
        for suffix in ('.seeding', '.seeding.tmp'):
            if os.path.exists(path + suffix):
                self.violation('side effects', '%s left behind'
                               % os.path.basename(path + suffix), case)
        if case.marker and os.path.exists(case.marker):
            self.violation('executions', 'a copied pickle was loaded: %s '
                           'exists' % case.marker, case)
        seen = self.seen
        if seen and (seen[0][1] != seed.query(0, z64) or len(seen[0]) > 2
                     and seen[0][2] != seed.proof(
                         seed.new_digest().digest())):
            self.violation('streams', 'a new replica sent %r' % (
                seen[0][1:],), case)
        if blob_dir:
            self.check_blobs(case, blob_dir, kept)

    def check_blobs(self, case, blob_dir, kept):
        """The blob files of the kept transactions, and no other."""
        helper = FilesystemHelper(blob_dir)
        expected = {helper.getBlobFilename(oid, tid): content
                    for t in self.cs.txns if t.end <= kept
                    for oid, tid, content in t.blobs}
        found = {os.path.join(directory, name)
                 for directory, _, files in os.walk(blob_dir)
                 for name in files if name != '.layout'}
        for name, content in expected.items():
            try:
                same = Path(name).read_bytes() == content
            except OSError:
                same = False
            if not same:
                self.violation(UNCHECKED, 'the blob file %s of a kept '
                               'transaction is missing or differs'
                               % os.path.relpath(name, blob_dir), case)
        extra = sorted(os.path.relpath(n, blob_dir)
                       for n in found - set(expected))
        if extra:
            self.violation('side effects', 'blob files left behind: %s'
                           % ', '.join(extra), case)


class CopyInProcessLane(CopyLane):
    """`copy_file` of a new replica in this process, one case each."""

    side, in_process = 'copy-in-process', True

    def listen(self):
        self.address = os.path.join(tempfile.mkdtemp(dir=self.directory),
                                    'primary.sock')
        return socketserver.ThreadingUnixStreamServer(self.address, _Serve)

    def copy(self, case):
        work = tempfile.mkdtemp(dir=self.directory)
        path = os.path.join(work, 'Data.fs')
        blob_dir = os.path.join(work, 'blobs') if self.cs.blobs else None
        began = time.monotonic()
        try:
            seeding.copy_file(SimpleNamespace(   # what it reads of <zrs>
                name='1', path=path, blob_dir=blob_dir,
                replicate_from=self.address, section=SimpleNamespace(
                    copy_file='new', copy_file_minimum=0, ssl=None)))
        except Exception as exc:
            self.violation('daemon crashes', 'copy_file raised %s: %s' % (
                type(exc).__name__, exc), case)
        if time.monotonic() - began > HANG:
            self.violation('hangs', 'the copy took %.0f s' % (
                time.monotonic() - began), case)
        wait_until(lambda: self.seen, HANG, 0.001, 'the fake primary')
        self.check_copy(case, path, blob_dir, None)
        for record in self.logs:
            if record.levelno >= logging.ERROR or record.exc_info or (
                    case.expected == len(case.data)
                    and case.kind in ('valid', 'hostile-record')):
                self.violation('log', 'logged %s: %s%s' % (
                    record.levelname, record.getMessage()[:300],
                    ' (with a traceback)' if record.exc_info else ''), case)
        del self.logs[:]
        shutil.rmtree(work, ignore_errors=True)


class CopyProcessLane(CopyLane):
    """A real zrsd replica per case, copying from the fake primary, then
    replicating the rest with ZRS."""

    side = name = 'copy'

    def listen(self):
        return socketserver.ThreadingTCPServer(('127.0.0.1', 0), _Serve)

    def copy(self, case):
        cs = self.cs
        node = ZrsdNode(os.path.join(self.directory, 'case-%d' % case.number),
                        'replica', blobs=cs.blobs,
                        upstream=self.server.server_address[1],
                        copy_file='new', register=started,
                        zrs_lines='  copy-file-minimum 0\n').launch()
        try:
            wait_until(lambda: self.zrs_tids or not node.running(), HANG,
                       message='a ZRS handshake')
        except AssertionError:
            self.violation('hangs', 'no ZRS handshake within %s s' % HANG,
                           case)
        if not node.running():
            self.violation('daemon crashes', 'the replica exited with %s; '
                           'its log ends:\n%s' % (
                               node.process.popen.returncode,
                               node.log()[-3000:]), case)
            node.close()
            return False
        tids = {tid: end for end, tid in cs.boundaries.items()}
        tids[z64] = 0 if case.highest < 4 else 4     # (ZRS cannot tell)
        kept = tids.get(self.zrs_tids[0]) if self.zrs_tids else None
        if self.zrs_tids and kept is None:
            self.violation(UNCHECKED, 'ZRS from %s, not in the source'
                           % self.zrs_tids[0].hex(), case)
        try:
            node.wait_for_tid(self.source.txns[-1].tid, HANG)
        except AssertionError as exc:
            self.violation('hangs', 'ZEO: %s' % exc, case)
        status = node.stop(HANG, expect=None)
        if status != 0:
            self.violation('daemon crashes', 'the replica exited with %s on '
                           'SIGTERM' % status, case)
        if kept is not None:
            self.check_copy(case, node.fs_path, None, kept)
        if case.marker:
            if Path(node.fs_path).read_bytes() != case.data:
                self.violation(UNCHECKED, "the file is not the primary's",
                               case)
        elif not self.check_file(node.fs_path, node.blob_dir,
                                 len(self.source)):
            self.violation(UNCHECKED, 'after ZRS, the history is not the '
                           'source (above)', case)
        for line in node.log().splitlines():
            if ' ERROR ' in line or ' CRITICAL ' in line or \
                    line.startswith('Traceback'):
                self.violation('log', line[:300], case)
        if self.verbose or not self.summary.clean:
            print('[copy] %s: ZRS from %s' % (case.describe(), kept))
        if self.summary.clean:
            shutil.rmtree(node.directory, ignore_errors=True)
