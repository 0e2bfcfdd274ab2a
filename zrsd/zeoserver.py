"""ZEO serving: a `StorageServer` for the served storages.

ZEO's asyncio loop runs in the main thread (`run()`); replicated commits
invalidate client caches from the reactor thread through `invalidate`.
"""
import logging

from ZEO.StorageServer import StorageServer as ZEOStorageServer
from ZEO.StorageServer import StorageServerDB
from ZODB.POSException import ReadOnlyError

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


class StorageServer(ZEOStorageServer):
    """ZEO's StorageServer, safe for invalidations from a foreign thread.

    ZEO's own `invalidate` iterates the live list of a storage's client
    connections while the loop thread may add or remove entries; a client
    that disconnects mid-iteration would make another client miss an
    invalidation.  This version iterates over a snapshot.
    """

    def invalidate(self, zeo_storage, storage_id, tid, invalidated):
        invq = self.invq[storage_id]
        if len(invq) >= self.invq_bound:
            invq.pop()
        invq.insert(0, (tid, invalidated))
        for client in list(self.zeo_storages_by_storage_id[storage_id]):
            if client is not zeo_storage:
                client.async_threadsafe(
                    'invalidateTransaction', tid, invalidated)


def replace_storage(server, name, storage):
    """Serve `storage` as `name` from now on (the loop thread): a promoted
    replica's writable storage.  Clients connected to the old one are
    disconnected, so that they reconnect to the new one (writable, for
    those that ask)."""
    server.storages[name] = storage
    storage.registerDB(StorageServerDB(server, name))
    clients = list(server.zeo_storages_by_storage_id.get(name, ()))
    for client in clients:
        client.connection.close()
    logger.info('ZEO storage %s replaced; %d clients disconnected to '
                'reconnect', name, len(clients))


def create_server(options, storages):
    """A StorageServer for `storages` ({name: storage}) per a <zeo> section.

    The server listens once this returns; `server.loop()` serves.
    """
    server_logger = logging.getLogger('ZEO.asyncio.server')
    if not any(isinstance(f, QuietReadOnlyRefusals)
               for f in server_logger.filters):
        server_logger.addFilter(QuietReadOnlyRefusals())
    return StorageServer(
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
