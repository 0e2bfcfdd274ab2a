"""The command-line tools around the daemon: each one a command of its own,
run by an operator next to zrsd (or while it is stopped), that reads the
daemon's configuration, storages or ZRS port but is no part of the running
daemon.  `verify` (`zrsd-verify`) compares a replica's history with its
primary's online; `rewind` (`zrsd-rewind`) cuts a forked replica back to
the history it shares with its primary.
"""
