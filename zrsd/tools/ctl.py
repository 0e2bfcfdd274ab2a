"""`zrsdctl -C FILE ACTION`: control a zrsd supervised by zdaemon.

zdaemon's controller (zdctl) reads the `<runner>` section of the zrsd
configuration file, the way ZEO's `zeoctl` reads a runzeo file.  Actions
are zdctl's: start, stop, restart, status, fg, kill SIGNAL, logreopen,
help; and zrsd's own `promote [NAME]` (see `promote`), which works
whatever manager (zdaemon, systemd) started zrsd.  When `<runner>` names
no `program`, the supervised program is `zrsd -C FILE` for the same FILE.

zdctl starts its daemon manager by running ``python sys.argv[0]`` again with
DAEMON_MANAGER_MODE=1 in the environment: this module is run as a script
then, so it imports the package absolutely and handles that mode itself
(the manager must load the configuration with the same relaxed schema).
"""
import os
import sys

if __name__ == '__main__':
    # Run as a script by zdctl (see above): the package directory, first on
    # sys.path, must not shadow top-level modules.
    if os.path.abspath(sys.path[0]) == os.path.dirname(
            os.path.abspath(__file__)):
        del sys.path[0]

import argparse
import signal
import time

import ZConfig
import zdaemon.zdctl
import zdaemon.zdrun

import zrsd.config
from zrsd import disk
from zrsd.daemon import promotion
from zrsd.network.sockets import format_address
from zrsd.version import version


def default_program(configfile):
    """The command zdaemon supervises when `<runner>` names none."""
    configfile = os.path.abspath(configfile)
    # The zrsd script installed next to this one (console scripts), else
    # this interpreter running the module.
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    script = os.path.join(here, 'zrsd')
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script, '-C', configfile]
    return [sys.executable, '-m', 'zrsd.daemon.main', '-C', configfile]


HELP = """\
usage: zrsdctl -C FILE [ACTION [ARGUMENTS]]

Control a zrsd process supervised by zdaemon: the <runner> section of the
zrsd configuration FILE says where its socket, pid and transcript go (see
etc/zrs.conf).  Without an ACTION, an interactive shell.

actions:
  start            start zrsd under a daemon manager (zdaemon)
  stop             stop it (SIGTERM: secondaries get what is committed)
  restart          stop, then start
  status           is it running? (exit 0 running, 3 not running)
  fg, foreground   run zrsd in the foreground (Ctrl-C stops it)
  kill [SIGNAL]    send SIGNAL (default SIGTERM) to zrsd
  logreopen        reopen the log files (after a rotation)
  promote [NAME]   make the replica <zrs NAME> a primary, now if zrsd runs
                   (whoever started it), else at its next start
  help [ACTION]    zdaemon's help on an action

options:
  -C FILE, --configure FILE   the zrsd configuration file (required)
  --timeout SECONDS           promote: how long to wait for zrsd (default 30)
  -h, --help                  this help
  --version                   zrsdctl's version

Configuration errors are one line, FILE:LINE: key: problem (exit status 2).
"""


class _ZrsdConfigFile:
    """zdaemon options reading zrsd's configuration file: zrsd's schema
    (`program` optional there), and a configuration error as one line
    naming file, line and key."""

    def __init__(self):
        super().__init__()
        self.schema = zrsd.config.schema()

    def load_configfile(self):
        try:
            super().load_configfile()
        except ZConfig.ConfigurationError as exc:
            print('zrsdctl: configuration error: %s' % (
                zrsd.config.describe_error(exc, self.configfile)),
                file=sys.stderr)
            sys.exit(2)


class ControlOptions(_ZrsdConfigFile, zdaemon.zdctl.ZDCtlOptions):
    """zdctl's options, reading zrsd's configuration file."""

    def __init__(self):
        super().__init__()
        self.schemafile = zrsd.config.SCHEMA_PATH
        # `program` defaults to zrsd itself (in realize), so it is not
        # required of the command line or the file.
        del self.required_map['program']

    def realize(self, *args, **kw):
        super().realize(*args, doc=HELP, **kw)
        if self.configfile is None:
            self.usage('a zrsd configuration file is required (-C FILE)')
        # The manager may change directory (`directory` in <runner>).
        self.configfile = os.path.abspath(self.configfile)
        if not self.program:
            self.program = default_program(self.configfile)


class ManagerOptions(_ZrsdConfigFile, zdaemon.zdrun.ZDRunOptions):
    """zdrun's options (the daemon manager), reading zrsd's file."""


def run_manager(args):
    """The daemon manager (zdrun), started by `zrsdctl start`."""
    daemonizer = zdaemon.zdrun.Daemonizer()
    options = ManagerOptions()
    options.realize(args)
    daemonizer.options = options
    daemonizer.logger = options.logger
    daemonizer.run()


def promote_request(args):
    """(configfile, name, timeout) when `args` ask for `promote`, else
    None."""
    parser = argparse.ArgumentParser(prog='zrsdctl', add_help=False)
    parser.add_argument('-C', '--configure')
    parser.add_argument('--timeout', type=float, default=30.0)
    parser.add_argument('action', nargs='?')
    parser.add_argument('name', nargs='?')
    try:
        known, _ = parser.parse_known_args(args)
    except SystemExit:
        return None
    if known.action != 'promote':
        return None
    return known.configure, known.name, known.timeout


def _running(fs_path):
    """Is a process holding the FileStorage's lock?"""
    try:
        disk.ensure_unlocked(fs_path)
    except disk.StorageLocked:
        return True
    return False


def promote(configfile, name, timeout=30.0):
    """`zrsdctl -C FILE promote [NAME]`: turn a replica into a primary.

    Records the promotion beside the storage, then signals the running
    zrsd (found through the storage's lock file, whatever started it) and
    waits for it to confirm.  Exit status: 0 done (or done at the next
    start, when zrsd is not running), 1 not confirmed, 2 usage.
    """
    if configfile is None:
        print('zrsdctl: promote needs -C FILE', file=sys.stderr)
        return 2
    try:
        zrs = zrsd.config.choose_section(zrsd.config.load(configfile), name)
    except (zrsd.config.ConfigError, ValueError) as exc:
        print('zrsdctl: %s' % exc, file=sys.stderr)
        return 2
    label = '<zrs %s>' % zrs.name
    if zrs.replicate_from is None:
        print('%s is a primary already (no replicate-from)' % label)
        return 0
    record = promotion.read_record(zrs.path)
    if record is not None and record.get('state') == promotion.DONE:
        print('%s was promoted already, on %s (%s)' % (
            label, record.get('promoted_at'),
            promotion.record_path(zrs.path)))
        return 0
    promotion.request(zrs.path, format_address(zrs.replicate_from))
    if not _running(zrs.path):
        print('%s: zrsd is not running on %s; it will start as a primary '
              '(recorded in %s)' % (label, zrs.path,
                                    promotion.record_path(zrs.path)))
        return 0
    pid = disk.lock_holder(zrs.path)
    signum = getattr(signal, promotion.PROMOTE_SIGNAL_NAME)
    if pid is None or not promotion.catches_signal(pid, signum):
        print('zrsdctl: the process holding %s (pid %s) does not take '
              'promotion signals (not zrsd -C?); restart it: it will start '
              'as a primary' % (zrs.path, pid), file=sys.stderr)
        return 1
    os.kill(pid, signum)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = promotion.read_record(zrs.path)
        if record.get('state') == promotion.DONE:
            print('%s promoted to primary by zrsd (pid %d) at %s; ZEO is '
                  'writable; recorded in %s' % (
                      label, pid, record.get('last_replicated_tid'),
                      promotion.record_path(zrs.path)))
            return 0
        time.sleep(0.1)
    print('zrsdctl: zrsd (pid %d) did not confirm the promotion within %gs; '
          'see its log' % (pid, timeout), file=sys.stderr)
    return 1


def main(args=None):
    if args is None:
        args = sys.argv[1:]
    if os.environ.pop('DAEMON_MANAGER_MODE', None):
        return run_manager(args)
    if args[:1] == ['--version']:
        print('zrsdctl ' + version())
        return 0
    request = promote_request(args)
    if request is not None:
        return promote(*request)
    # zdctl ends the process itself (with the action's status).
    zdaemon.zdctl.main(args, ControlOptions())


if __name__ == '__main__':
    sys.exit(main())
