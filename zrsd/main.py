"""`zrsd -C FILE`: run the replica daemon in the foreground.

This is the only module that wires the pieces together, loads the
configuration and touches signals.

Threads: the main thread runs ZEO's asyncio loop (and, before and after it,
start-up and shut-down); the reactor thread runs Twisted and replication.
Signal handlers only record the request and stop the loop; `Daemon.run`
acts on it.
"""
import argparse
import logging
import os
import signal
import sys

from . import config as zconfig
from . import systemd
from .node import Node, join_streamers
from .reactor import ReactorThread
from .zeoserver import create_server

logger = logging.getLogger('zrsd')

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='zrsd',
        description='ZRS replica daemon: replicate ZODB FileStorages from '
                    'a ZRS primary and serve them read-only over ZEO.')
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
        self.nodes = []
        self.storages = {}     # ZEO storage name -> the node's storage
        self.server = None
        self.reactor = None
        self.exit_status = EXIT_OK
        self.stop_reason = None

    # -- main line ----------------------------------------------------------

    def run(self):
        try:
            self.open_storages()
            self.reactor = ReactorThread(on_crash=self.reactor_crashed)
            self.reactor.start()
            # Serve first: ZEO registers with each storage and reads its
            # recent invalidations before any replicated commit can race
            # with that.
            self.server = create_server(self.config.zeo, self.storages)
            self.write_pid_file()
            self.install_signal_handlers()
            self.reactor.call(self.start_links)
            logger.info('serving %s over ZEO at %s',
                        ', '.join(sorted(self.storages)),
                        self.server.acceptor.addr)
            systemd.notify('READY=1')
            self.server.acceptor.event_loop.run_forever()
            logger.info('stopping (%s)', self.stop_reason)
            systemd.notify('STOPPING=1')
        except Exception:
            logger.critical('zrsd failed', exc_info=True)
            self.exit_status = EXIT_FAILURE
        finally:
            self.shut_down()
        return self.exit_status

    def open_storages(self):
        for zrs in self.config.storages:
            node = Node(zrs)
            self.nodes.append(node)
            self.storages[zrs.name] = node.storage

    def start_links(self):
        """Start every node's client and server (reactor thread)."""
        for node in self.nodes:
            node.start(self.reactor.reactor)

    def stop_links(self):
        """Stop every link, aborting half-received transactions (reactor
        thread); returns the streamers to join."""
        streamers = []
        for node in self.nodes:
            streamers.extend(node.stop())
        return streamers

    # -- signals and events ---------------------------------------------------

    def install_signal_handlers(self):
        loop = self.server.acceptor.event_loop
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        loop.add_signal_handler(signal.SIGUSR2, self.reopen_logs)

    def request_stop(self, signum):
        """First SIGTERM/SIGINT: stop the loop; a second one forces exit."""
        self.stop_reason = signal.Signals(signum).name
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.server.acceptor.event_loop.remove_signal_handler(sig)
            signal.signal(sig, self.force_exit)
        self.server.acceptor.event_loop.stop()

    def force_exit(self, signum, frame):
        logger.warning('%s during shutdown: exiting at once',
                       signal.Signals(signum).name)
        logging.shutdown()
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
        loop = self.server.acceptor.event_loop if self.server else None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    # -- tear down, in reverse ----------------------------------------------

    def shut_down(self):
        if self.reactor is not None:
            if self.nodes and not self.reactor.crashed.is_set():
                try:
                    join_streamers(self.reactor.call(self.stop_links))
                except Exception:
                    logger.exception('stopping replication failed')
            self.reactor.stop()
        if self.server is not None:
            # Closes client connections and the storages (saving the
            # FileStorage index); the loop runs until the server is closed.
            loop = self.server.acceptor.event_loop
            self.server.close()
            loop.run_forever()
            loop.close()
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
    log_factory = setup_logging(config)
    return Daemon(config, log_factory).run()


if __name__ == '__main__':
    sys.exit(main())
