"""The Twisted reactor, run in a thread of its own.

The main thread belongs to ZEO's asyncio loop, so Twisted runs in a daemon
thread without signal handlers.  Twisted's log events go to the standard
`logging` module (logger ``twisted``).  If the reactor stops without being
asked to, `crashed` is set and `on_crash` is called (from the reactor
thread) so the main thread can shut the process down instead of serving a
replica that silently stopped replicating.
"""
import logging
import threading

from twisted.internet import threads
from twisted.logger import STDLibLogObserver, globalLogBeginner

logger = logging.getLogger(__name__)

_logging_bridged = False


def bridge_twisted_logging():
    """Send Twisted's log events to `logging` (once per process)."""
    global _logging_bridged
    if not _logging_bridged:
        globalLogBeginner.beginLoggingTo(
            [STDLibLogObserver(name='twisted')], redirectStandardIO=False,
            discardBuffer=True)
        _logging_bridged = True


class ReactorThread:
    """Own the reactor's thread: start, call into it, stop, notice crashes."""

    def __init__(self, reactor=None, on_crash=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.on_crash = on_crash
        self.crashed = threading.Event()
        self._stopping = False
        self._thread = None

    @property
    def running(self):
        """Has the thread started, and not ended?"""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout=30):
        bridge_twisted_logging()
        running = threading.Event()
        self.reactor.callWhenRunning(running.set)
        self._thread = threading.Thread(
            target=self._run, name='zrsd-reactor', daemon=True)
        self._thread.start()
        if not running.wait(timeout):
            raise RuntimeError('the Twisted reactor did not start')

    def _run(self):
        try:
            self.reactor.run(installSignalHandlers=False)
        except Exception:
            logger.exception('the Twisted reactor failed')
        if not self._stopping:
            logger.critical('the Twisted reactor stopped unexpectedly; '
                            'replication has stopped')
            self.crashed.set()
            if self.on_crash is not None:
                self.on_crash()

    def call(self, function, *args, **kw):
        """Run `function` in the reactor thread and return its result.

        Called from any other thread; blocks until it ran.
        """
        return threads.blockingCallFromThread(
            self.reactor, function, *args, **kw)

    def stop(self, timeout=30):
        """Stop the reactor and wait for its thread (from another thread)."""
        if self._thread is None or not self._thread.is_alive():
            return
        self._stopping = True
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.error('the Twisted reactor did not stop within %ss',
                         timeout)
