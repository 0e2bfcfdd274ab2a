"""ZEO serving: a `StorageServer` for the served storages.

ZEO's asyncio loop runs in the main thread (`zrsd.daemon.main`); replicated
commits invalidate client caches from the reactor thread through the
server's `invalidate` (made safe for that in `zrsd.internals`).
"""
import logging

from ZODB.POSException import ReadOnlyError

from zrsd import internals

logger = logging.getLogger(__name__)


class QuietReadOnlyRefusals(logging.Filter):
    """A client's write or pack refused by a replica is expected: log it as
    one INFO line instead of ZEO's ERROR with a traceback."""

    def filter(self, record):
        exc_info = record.exc_info
        if exc_info and exc_info[0] is not None and issubclass(
                exc_info[0], ReadOnlyError):
            message = record.getMessage()
            record.msg = ('client request refused, the storage is '
                          'read-only (ZEO: %s)')
            record.args = (message,)
            record.levelno, record.levelname = logging.INFO, 'INFO'
            record.exc_info = record.exc_text = None
        return True


server_address = internals.server_address
server_loop = internals.server_loop
client_count = internals.client_count


def replace_storage(server, name, storage):
    """Serve `storage` as `name` from now on (the loop thread): a promoted
    replica's writable storage.  Clients connected to the old one are
    disconnected, so that they reconnect to the new one (writable, for
    those that ask)."""
    disconnected = internals.swap_storage(server, name, storage)
    logger.info('ZEO storage %s replaced; %d clients disconnected to '
                'reconnect', name, disconnected)


def create_server(options, storages):
    """A StorageServer for `storages` ({name: storage}) per a <zeo> section.

    The server listens once this returns; its loop (`server_loop`)
    serves.
    """
    server_logger = logging.getLogger('ZEO.asyncio.server')
    if not any(isinstance(f, QuietReadOnlyRefusals)
               for f in server_logger.filters):
        server_logger.addFilter(QuietReadOnlyRefusals())
    return internals.StorageServer(
        options.address.address,
        storages,
        read_only=options.read_only,
        invalidation_queue_size=options.invalidation_queue_size,
        invalidation_age=options.invalidation_age,
        transaction_timeout=options.transaction_timeout,
        client_conflict_resolution=options.client_conflict_resolution,
        msgpack=options.msgpack,
        ssl=options.ssl.zeo_context() if options.ssl is not None else None,
    )
