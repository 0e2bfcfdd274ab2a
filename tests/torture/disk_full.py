"""Scenario disk-full: two replicas' disks fill up; space comes back.

Replica `full` has its data file and blobs on a small filesystem,
`fsonly` only its data file.  Each episode limits both to what they hold
plus 1-3 MB and commits heavily until both stop (exit 1, one CRITICAL
zrsd.disk line, no traceback); their files must open and be a prefix of
the primary's; one, in turn, restarted while still full, stops the same
way; with space back both catch up and end equal to the primary.

Variant `tmpfs` mounts a tmpfs (needs mount permission); variant
`injected` limits the data file only, with `quota_site`.
"""
import errno
import os
import re
import shutil
import subprocess
import tempfile

import ZODB.FileStorage

from .judges import compare_exact
from .scenario import Scenario, ScenarioFailed

QUOTA_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          'quota_site')
DISK_FULL_STOP = (r'(?m)^.* CRITICAL zrsd\.disk storage failure, stopping: '
                  r'.*(No space left on device|ENOSPC|\[Errno 28\]).*$')
BIG = 1 << 30


def run(*command):
    """Run `command` (mount, umount); its failure is an OSError."""
    done = subprocess.run(command, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if done.returncode:
        raise OSError(errno.EPERM, '%s: %s' % (' '.join(command), (
            done.stdout.decode('utf-8', 'replace').strip())))


class TmpfsSpace:
    """A tmpfs of limited size (variant `tmpfs`)."""

    variant, env = 'tmpfs', None

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        run('mount', '-t', 'tmpfs', '-o', 'size=%d' % BIG, 'tmpfs', directory)
        self.directory, self.mounted = directory, True

    def used(self):
        st = os.statvfs(self.directory)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def limit(self, size=BIG):
        run('mount', '-o', 'remount,size=%d' % (-(-size // 4096) * 4096),
            self.directory)

    grow = limit

    def close(self):
        if self.mounted:
            self.mounted = False
            try:
                run('umount', self.directory)
            except OSError:
                subprocess.run(['umount', '-l', self.directory])


class InjectedSpace:
    """A byte quota on the replica's data file (variant `injected`)."""

    variant = 'injected'

    def __init__(self, directory, fs_path):
        os.makedirs(directory, exist_ok=True)
        self.fs_path = fs_path
        self.quota_file = os.path.join(directory, 'quota')
        self.grow()
        self.env = {'PYTHONPATH': QUOTA_SITE,
                    'ZRSD_TORTURE_QUOTA_FILE': self.quota_file}

    def used(self):
        return (os.path.getsize(self.fs_path)
                if os.path.exists(self.fs_path) else 0)

    def limit(self, size=1 << 62):
        with open(self.quota_file + '.tmp', 'w') as f:
            f.write('%d\n' % size)
        os.replace(self.quota_file + '.tmp', self.quota_file)

    grow = limit

    def close(self):
        pass


class DiskFull(Scenario):
    name = 'disk-full'
    allowed_errors = (DISK_FULL_STOP,)

    def make_space(self, directory, fs_path):
        wanted = self.torture.disk_full_variant
        if wanted in ('auto', 'tmpfs'):
            try:
                return TmpfsSpace(directory)
            except OSError as exc:
                if wanted == 'tmpfs':
                    raise ScenarioFailed('cannot mount a tmpfs: %s' % exc)
                note = ('disk-full: mounting a tmpfs failed (%s); using the '
                        'injected variant' % exc)
                if note not in self.torture.notes:
                    self.torture.notes.append(note)
        return InjectedSpace(directory, fs_path)

    def run(self, counts):
        self.spaces, replicas = [], []
        self.start_primary(200)
        for name, blobs_on_small in (('full', True), ('fsonly', False)):
            small = os.path.join(self.directory, 'small-' + name)
            space = self.make_space(small, os.path.join(small, name + '.fs'))
            self.spaces.append(space)
            replicas.append(self.node(
                name, upstream=self.primary.repl_port, data_dir=small,
                blob_parent=small if blobs_on_small else self.directory,
                env=space.env).start())
            replicas[-1].space = space
        variant = self.spaces[0].variant
        self.say('disk-full variant: %s' % variant)
        self.torture.notes.append('disk-full variant that ran: %s' % variant)
        for replica in replicas:
            self.wait_caught_up(replica)
        for episode in range(counts['disk_full']):
            self.fill(replicas)
            for replica in replicas:
                self.check_stopped_file(replica)
            self.restart_while_full(replicas[episode % 2])
            for replica in replicas:
                replica.space.grow()
                replica.start()
            self.count('recoveries after space came back', 2)
            for replica in replicas:
                self.wait_caught_up(replica)
        self.settle(replicas)
        self.compare(*replicas)

    def fill(self, replicas):
        """Limit both filesystems to what they hold plus 1-3 MB; commit
        heavily until both replicas stopped."""
        for replica in replicas:
            space = replica.space
            space.limit(space.used() + (self.rng.randint(1, 3) << 20))
            replica.expected_exit = True      # judged by `wait_stopped`
        with self.writing('heavy'):
            for replica in replicas:
                self.wait_stopped(replica)
        self.count('disk-full episodes (2 replicas each)')

    def wait_stopped(self, replica):
        """`replica` exits 1 with one CRITICAL disk-full line, no traceback."""
        self.wait(lambda: not replica.running(),
                  '%s to stop on the full disk' % replica.name)
        status = replica.process.popen.returncode
        log = replica.log()
        lines = re.findall(DISK_FULL_STOP, log)
        if status != 1 or len(lines) != 1 or 'Traceback' in log:
            return self.crash(
                '%s on a full disk exited with %s, %d disk-full lines%s; '
                'log %s' % (replica.name, status, len(lines), ', a traceback'
                            if 'Traceback' in log else '', replica.logs[-1]))
        self.say('%s stopped: %s' % (replica.name, lines[0][:200]))
        self.count('fail-stops on a full disk')

    def check_stopped_file(self, replica):
        """The file left opens writable and is a prefix of the primary's."""
        with tempfile.TemporaryDirectory(dir=self.directory,
                                         prefix='copy-') as scratch:
            copy = os.path.join(scratch, 'copy.fs')
            shutil.copyfile(replica.fs_path, copy)
            try:
                ZODB.FileStorage.FileStorage(copy).close()
            except Exception as exc:
                return self.torture.mismatches.append(
                    '%s: %s: the file does not open after a stop on a full '
                    'disk: %s: %s' % (self.name, replica.name,
                                      type(exc).__name__, exc))
            self.writer.pause()
            try:
                compared, blobs, mismatches = compare_exact(
                    self.primary, replica, prefix=True, replica_path=copy)
            finally:
                self.writer.resume()
        self.say('%s stopped on a full disk: its %d transactions are a '
                 'prefix of the primary\'s, %d mismatches' % (
                     replica.name, compared, len(mismatches)))
        self.record(replica, compared, blobs, mismatches)

    def restart_while_full(self, replica):
        """Restarted on the full disk (as systemd would), it stops again."""
        replica.start()
        replica.expected_exit = True
        self.wait_stopped(replica)
        self.count('restarts while the disk was full')

    def cleanup(self):
        super().cleanup()
        for space in getattr(self, 'spaces', ()):
            space.close()
