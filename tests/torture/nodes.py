"""The torture's zrsd node: the harness's `ZrsdNode`, watched.

A torture node also serves the monitor's `/status` (so that waiting for
a replica to catch up opens no ZEO connection), may keep its data file
and blobs elsewhere than its config and logs (on a small filesystem),
may run with extra environment variables (the injected disk-full
variant), and knows whether its exit was asked for: a node that exits on
its own is a crash, which the scenario records instead of failing at
once.
"""
import json
import os
import urllib.request

from harness.zrsd_nodes import ZrsdNode

WAIT = 180.0     # seconds before a wait counts as a hang (a violation)


class TortureNode(ZrsdNode):
    """A zrsd node with blobs and a monitor, restartable on the same ports.

    `data_dir` holds `NAME.fs` (default: `directory`); `blob_parent` holds
    `NAME.blobs` (default: `data_dir`); `env` is added to the process's
    environment.  `logs` lists the log of every start.
    """

    def __init__(self, directory, name, upstream=None, serve=None,
                 data_dir=None, blob_parent=None, env=None):
        super().__init__(directory, name, upstream, serve, blobs=True,
                         monitor=True, env=env)
        data_dir = data_dir or self.directory
        self.fs_path = os.path.join(data_dir, name + '.fs')
        self.blob_dir = os.path.join(blob_parent or data_dir,
                                     name + '.blobs')
        self.expected_exit = True
        self.logs = []

    def start(self, wait=None):
        """Start zrsd.  A primary waits until it serves ZEO and ZRS; a
        replica returns at once unless `wait` is true (then it waits until
        it serves ZEO, i.e. holds data)."""
        if wait is None:
            wait = self.role == 'primary'
        if wait:
            return super().start(WAIT)
        return self.launch()

    def launch(self):
        super().launch()
        self.logs.append(self.log_path)
        self.expected_exit = False
        return self

    def unexpected_exit(self):
        """The exit status if the process exited without being told to
        (reported once), else None."""
        if self.process is None or self.expected_exit:
            return None
        status = self.process.popen.poll()
        if status is not None:
            self.expected_exit = True
        return status

    def kill(self):
        self.expected_exit = True
        super().kill()

    def stop(self):
        """SIGTERM; returns the exit status (the scenario judges it)."""
        self.expected_exit = True
        return super().stop(WAIT, expect=None)

    def close(self):
        self.expected_exit = True
        super().close()

    def log_text(self):
        """The log of the current (or last) start."""
        return self.log() if self.process is not None else ''

    def status(self):
        """This node's entry in the monitor's /status, or None (not
        serving yet)."""
        url = 'http://127.0.0.1:%d/status' % self.monitor_port
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)['storages'][0]
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def served_tid(self):
        """The last tid from /status, or None."""
        status = self.status()
        if status is None:
            return None
        return bytes.fromhex(status['last_transaction'])
