"""`zrsdctl -C FILE ACTION`: control a zrsd supervised by zdaemon.

zdaemon's controller (zdctl) reads the `<runner>` section of the zrsd
configuration file, the way ZEO's `zeoctl` reads a runzeo file.  Actions
are zdctl's: start, stop, restart, status, fg, kill SIGNAL, logreopen,
help.  When `<runner>` names no `program`, the supervised program is
`zrsd -C FILE` for the same FILE.

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

import zdaemon.zdctl
import zdaemon.zdrun

import zrsd.config


def default_program(configfile):
    """The command zdaemon supervises when `<runner>` names none."""
    configfile = os.path.abspath(configfile)
    # The zrsd script installed next to this one (console scripts), else
    # this interpreter running the module.
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    script = os.path.join(here, 'zrsd')
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script, '-C', configfile]
    return [sys.executable, '-m', 'zrsd.main', '-C', configfile]


class ControlOptions(zdaemon.zdctl.ZDCtlOptions):
    """zdctl's options, reading zrsd's configuration file."""

    def __init__(self):
        super().__init__()
        self.schema = zrsd.config.schema()  # `program` optional there
        self.schemafile = zrsd.config.SCHEMA_PATH
        # `program` defaults to zrsd itself (in realize), so it is not
        # required of the command line or the file.
        del self.required_map['program']

    def realize(self, *args, **kw):
        super().realize(*args, **kw)
        if self.configfile is None:
            self.usage('a zrsd configuration file is required (-C FILE)')
        # The manager may change directory (`directory` in <runner>).
        self.configfile = os.path.abspath(self.configfile)
        if not self.program:
            self.program = default_program(self.configfile)


class ManagerOptions(zdaemon.zdrun.ZDRunOptions):
    """zdrun's options (the daemon manager), reading zrsd's file."""

    def __init__(self):
        super().__init__()
        self.schema = zrsd.config.schema()  # `program` optional there


def run_manager(args):
    """The daemon manager (zdrun), started by `zrsdctl start`."""
    daemonizer = zdaemon.zdrun.Daemonizer()
    options = ManagerOptions()
    options.realize(args)
    daemonizer.options = options
    daemonizer.logger = options.logger
    daemonizer.run()


def main(args=None):
    if args is None:
        args = sys.argv[1:]
    if os.environ.pop('DAEMON_MANAGER_MODE', None):
        return run_manager(args)
    # zdctl ends the process itself (with the action's status).
    zdaemon.zdctl.main(args, ControlOptions())


if __name__ == '__main__':
    sys.exit(main())
