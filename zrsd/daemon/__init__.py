"""One zrsd process: `zrsd -C` (main), the replication side wired once
(replication, node, reactor), ZEO serving, monitoring, systemd
notification, promotion records.
"""
