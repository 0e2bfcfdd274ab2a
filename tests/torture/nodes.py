"""The torture's zrsd node: blobs, a monitor (waiting for a catch-up
opens no ZEO connection), its files possibly on a small filesystem, and
an exit it did not ask for counted as a crash.
"""
import json
import os

from harness.process import http_get
from harness.zrsd_nodes import ZrsdNode

WAIT = 180.0     # seconds before a wait counts as a hang (a violation)


class TortureNode(ZrsdNode):
    """`data_dir` holds `NAME.fs`, `blob_parent` `NAME.blobs`; `logs`."""

    def __init__(self, directory, name, upstream=None, serve=None,
                 data_dir=None, blob_parent=None, env=None):
        super().__init__(directory, name, upstream, serve, blobs=True,
                         monitor=True, env=env)
        data_dir = data_dir or self.directory
        self.fs_path = os.path.join(data_dir, name + '.fs')
        self.blob_dir = os.path.join(blob_parent or data_dir, name + '.blobs')
        self.expected_exit, self.logs = True, []

    def start(self):
        """A primary returns once it serves; a replica at once."""
        return super().start(WAIT) if self.role == 'primary' else self.launch()

    def launch(self):
        super().launch()
        self.logs.append(self.log_path)
        self.expected_exit = False
        return self

    def unexpected_exit(self):
        """The status of an exit not asked for (reported once), or None."""
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

    def served_tid(self):
        """The last tid from the monitor's /status, or None."""
        try:
            last = json.loads(http_get(self.monitor_port, '/status')[2])[
                'storages'][0]['last_transaction']
        except (OSError, ValueError, KeyError, IndexError):
            return None
        return last and bytes.fromhex(last)
