"""`zrsd -C FILE`: run the replica daemon in the foreground.

This module wires the daemon: it loads the configuration, handles
signals, and puts the replication side (`zrsd.daemon.replication`, wired
the same way for `%import zrsd` under runzeo), the ZEO server
(`zrsd.daemon.zeoserver`) and the monitor together.

Threads: the main thread runs ZEO's asyncio loop (and, before and after it,
start-up and shut-down); the reactor thread runs Twisted and replication.
Signal handlers only record the request and wake the main thread;
`Daemon.run` acts on it.
"""
import logging
import os
import signal
import sys
import threading
import time

from ZODB.utils import z64

from zrsd import config as zconfig
from zrsd import disk
from zrsd.daemon import monitor
from zrsd.daemon import promotion
from zrsd.daemon import systemd
from zrsd.daemon.replication import Replication
from zrsd.daemon.reactor import ReactorThread
from zrsd.daemon import zeoserver
from zrsd.daemon.zeoserver import create_server, replace_storage
from zrsd.network.sockets import ListenError, format_address
from zrsd.tools.options import command_parser
from zrsd.version import versions

logger = logging.getLogger('zrsd')

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def parse_args(argv):
    parser = command_parser(
        'zrsd',
        description='The ZRS replication daemon, in the foreground: for each '
                    '<zrs> section of the\nconfiguration, replicate a ZODB '
                    'FileStorage from a ZRS primary and serve it\nread-only '
                    'over ZEO, and/or serve its transactions to secondaries '
                    '(a primary\nor a cascade).',
        epilog='Exit status: 0 stopped on request, 1 failure (see the log), '
               '2 configuration\nerror.  To run it as a service: zrsdctl '
               '(zdaemon) or the systemd unit in etc/.\n\n'
               'Example: zrsd -C /etc/zrsd/zrs.conf')
    parser.add_argument('-C', '--configure', metavar='FILE', required=True,
                        help='the zrsd configuration file')
    return parser.parse_args(argv)


def setup_logging(config):
    """Install the <eventlog> handlers; return the factory (for reopen)."""
    if config.eventlog is not None:
        config.eventlog()
        return config.eventlog
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format='%(asctime)s %(levelname)s %(name)s %(message)s')
    return None


class Daemon:
    """One zrsd process: its nodes (storages and links), the ZEO server."""

    def __init__(self, config, log_factory=None):
        self.config = config
        self.log_factory = log_factory
        self.replication = None
        self.storages = {}     # ZEO storage name -> the node's storage
        self.server = None
        self.loop = None       # ZEO's asyncio loop, once the server exists
        self.reactor = None
        self.monitor = None
        self.state = 'opening'   # starting, waiting, serving, stopping
        self.notified_ready = False
        self.exit_status = EXIT_OK
        self.stop_reason = None
        self.stop_requested = threading.Event()
        self.promotion_requested = threading.Event()
        self.heartbeat = None
        self.watchdog = None
        self.versions = versions()

    @property
    def nodes(self):
        """The nodes of the `<zrs>` sections, once opened."""
        return self.replication.nodes if self.replication is not None else []

    # -- main line ----------------------------------------------------------

    def run(self):
        try:
            self.install_signal_handlers()
            self.reactor = ReactorThread(on_crash=self.reactor_crashed)
            self.reactor.start()
            # Watchable from the first second: before the storages open.
            self.reactor.call(self.start_monitoring)
            self.open_storages()
            self.state = 'starting'
            self.replication.start()
            self.watchdog = self.start_watchdog()
            if self.wait_for_data():
                self.serve()
                self.state = 'serving'
                serving = 'serving %s over ZEO at %s' % (
                    ', '.join(sorted(self.storages)),
                    zeoserver.server_address(self.server))
                logger.info('%s', serving)
                if self.notified_ready:
                    systemd.notify('STATUS=' + serving)
                else:
                    systemd.notify('READY=1')
                if self.watchdog is not None:
                    self.loop.call_soon(self._ping_every, self.watchdog)
                self.loop.run_forever()
            self.state = 'stopping'
            logger.info('stopping (%s)', self.stop_reason)
            systemd.notify('STOPPING=1')
        except disk.StorageFailure as failure:
            disk.log_failure(failure)
            self.exit_status = EXIT_FAILURE
        except ListenError as exc:
            logger.critical('zrsd failed: %s', exc)
            self.exit_status = EXIT_FAILURE
        except disk.StorageLocked as exc:
            # Not a failure a restart mends: 2 stops systemd
            # (RestartPreventExitStatus) and zdaemon restarting it.
            logger.critical('zrsd failed: %s', exc)
            self.exit_status = EXIT_CONFIG
        except Exception:
            logger.critical('zrsd failed', exc_info=True)
            self.exit_status = EXIT_FAILURE
        finally:
            self.shut_down()
        return self.exit_status

    def open_storages(self):
        self.replication = Replication(self.config.storages, self.reactor)
        for node in self.nodes:
            self.storages[node.name] = node.storage

    def wait_for_data(self):
        """Unless `serve-empty`, wait until every replica holds data.

        A read-only ZEO client cannot even open a DB on an empty replica
        (it would have to create the root object).  Returns False when a
        stop was requested meanwhile.
        """
        empty = [node for node in self.nodes
                 if node.role != 'primary'
                 and node.storage.lastTransaction() == z64]
        if self.config.zeo.serve_empty or not empty:
            return not self.stop_requested.is_set()
        self.state = 'waiting'
        names = ', '.join(n.name for n in empty)
        logger.info('waiting for the first transaction of %s before '
                    'serving ZEO', names)
        # Started, not serving: `systemctl start` returns; /ready and
        # /status say what it waits for.
        systemd.notify('READY=1\nSTATUS=waiting for the first transaction '
                       'of %s; ZEO not serving yet' % names)
        self.notified_ready = True
        for node in empty:
            while (node.replicating
                   and node.storage.lastTransaction() == z64):
                if self.stop_requested.wait(0.1):
                    return False
                if self.promotion_requested.is_set():
                    self.promote()
                if self.watchdog is not None:
                    self.watchdog.ping()
        return not self.stop_requested.is_set()

    def serve(self):
        """Create the ZEO server, with replicated commits held meanwhile.

        ZEO reads each storage's recent invalidations, then registers for
        new ones; a commit in between would be missing from its queue.
        """
        gates = [node.storage.commit_gate for node in self.nodes
                 if hasattr(node.storage, 'commit_gate')]
        for gate in gates:
            gate.acquire()
        try:
            self.server = create_server(self.config.zeo, self.storages)
        except OSError as exc:
            raise ListenError('ZEO clients (<zeo> address)', format_address(
                self.config.zeo.address.address), exc) from None
        finally:
            for gate in gates:
                gate.release()
        self.loop = zeoserver.server_loop(self.server)
        self.write_pid_file()
        if self.promotion_requested.is_set():
            self.loop.call_soon(self.promote)
        if self.stop_requested.is_set():
            self.loop.call_soon(self.loop.stop)

    def start_monitoring(self):
        """Serve /metrics, /status and /ready if configured (reactor
        thread)."""
        section = self.config.monitor
        if section is not None:
            self.monitor = monitor.listen(
                self.reactor.reactor, section.address.address, self.status,
                section.max_lag)

    def status(self):
        """Everything /status, /metrics and /ready report (reactor
        thread); storages not open yet are `opening`."""
        now = time.time()
        nodes = {node.name: node for node in self.nodes}
        storages = []
        for zrs in self.config.storages:
            node = nodes.get(zrs.name)
            if node is None:
                storages.append({'name': zrs.name, 'state': 'opening',
                                 'role': zrs.role,
                                 'last_transaction': None})
                continue
            status = node.status(now)
            if self.state == 'stopping':
                status['state'] = 'stopping'
            if self.server is not None:
                status['zeo_clients'] = zeoserver.client_count(
                    self.server, node.name)
            storages.append(status)
        return {'pid': os.getpid(), 'time': now, 'state': self.state,
                'versions': self.versions, 'storages': storages}

    def promote(self):
        """Promote every replica with a pending promotion record (the main
        thread: the ZEO loop, or start-up)."""
        self.promotion_requested.clear()
        for node in self.nodes:
            if not node.replicating:
                continue
            try:
                record = promotion.read_record(node.zrs.path)
            except promotion.PromotionError as exc:
                logger.error('%s: cannot promote: %s', node.label, exc)
                continue
            if record is None or record.get('state') == promotion.DONE:
                continue
            storage = self.replication.promote(node)
            self.storages[node.name] = storage
            if self.server is not None:
                replace_storage(self.server, node.name, storage)

    # -- systemd watchdog ---------------------------------------------------

    def start_watchdog(self):
        """A `systemd.Watchdog` whose `ping` the main thread calls often
        (the wait for data, then the ZEO loop), or None without one; made
        once, at start.

        The reactor beats every second; a ping is sent only if the last
        beat is recent, so a wedged thread on either side stops the pings
        and systemd restarts the service.
        """
        interval = systemd.watchdog_interval()
        if not interval:
            return None
        self.heartbeat = time.monotonic()
        self.reactor.call(self._beat)
        return systemd.Watchdog(interval, lambda: (
            time.monotonic() - self.heartbeat < 2 * interval + 1))

    def _ping_every(self, watchdog):
        # The ZEO loop: ping, again in a tenth of the interval.
        watchdog.ping()
        self.loop.call_later(watchdog.interval / 10, self._ping_every,
                             watchdog)

    def _beat(self):
        self.heartbeat = time.monotonic()
        self.reactor.reactor.callLater(1, self._beat)

    # -- signals and events ---------------------------------------------------

    def install_signal_handlers(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)
        signal.signal(signal.SIGUSR2, self.request_log_reopen)
        signal.signal(getattr(signal, promotion.PROMOTE_SIGNAL_NAME),
                      self.request_promotion)

    def request_promotion(self, signum, frame):
        """SIGUSR1 (sent by `zrsdctl promote`): promote the replicas whose
        promotion record asks for it."""
        self.promotion_requested.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.promote)

    def request_stop(self, signum, frame):
        """First SIGTERM/SIGINT: record it, stop the loop; a second one
        forces exit."""
        if self.stop_requested.is_set():
            self.force_exit(signum)
        self.stop_reason = signal.Signals(signum).name
        self.stop_requested.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def request_log_reopen(self, signum, frame):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.reopen_logs)
        else:
            self.reopen_logs()

    def force_exit(self, signum):
        # No logging here: a handler blocked on a full pipe would block
        # the forced exit too.
        try:
            os.write(2, b'zrsd: %s during shutdown, exiting at once\n'
                     % signal.Signals(signum).name.encode())
        except OSError:
            pass
        os._exit(EXIT_FAILURE)

    def reopen_logs(self):
        if self.log_factory is None:
            logger.warning('SIGUSR2: no <eventlog> configured, nothing to '
                           'reopen')
            return
        self.log_factory.reopen()
        logger.info('log files reopened')

    def reactor_crashed(self):
        # Reactor thread: hand over to the main thread.
        self.exit_status = EXIT_FAILURE
        self.stop_reason = 'the reactor stopped unexpectedly'
        self.stop_requested.set()
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)

    # -- tear down, in reverse ----------------------------------------------

    def shut_down(self):
        if self.replication is not None:
            # ZEO's loop has stopped: no more ZEO commits; secondaries
            # catch up, then every link stops.
            try:
                self.replication.stop()
            except Exception:
                logger.exception('stopping replication failed')
        if self.reactor is not None:
            if self.monitor is not None and self.reactor.running:
                self.reactor.call(self.monitor.stopListening)
            self.reactor.stop()
        if self.server is not None:
            # Closes client connections and the storages (saving the
            # FileStorage index); the loop runs until the server is closed.
            self.server.close()
            self.loop.run_forever()
            self.loop.close()
        else:
            for storage in self.storages.values():
                storage.close()
        self.remove_pid_file()
        logger.info('stopped')

    def write_pid_file(self):
        path = self.config.zeo.pid_filename
        if path:
            with open(path, 'w') as f:
                f.write('%d\n' % os.getpid())

    def remove_pid_file(self):
        path = self.config.zeo.pid_filename
        if path:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = zconfig.load(args.configure)
    except zconfig.ConfigError as exc:
        print('zrsd: configuration error: %s' % exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        # Before logging starts: a second zrsd must not write into the
        # log of the one that runs.
        for zrs in config.storages:
            disk.ensure_unlocked(zrs.path)
    except disk.StorageLocked as exc:
        print('zrsd: %s' % exc, file=sys.stderr)
        return EXIT_CONFIG
    log_factory = setup_logging(config)
    return Daemon(config, log_factory).run()


if __name__ == '__main__':
    sys.exit(main())
