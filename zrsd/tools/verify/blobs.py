"""Comparing blob files for `zrsd-verify`.

Where both sides hold the same blob record (the comparison of records found
them equal), `BlobComparison` compares the two blob files by size and
sha256, read in blocks.  A side without blobs (a file given without its
blob directory, a ZEO server without a blob directory) is not compared:
the report says how many blob records went unchecked.
"""
import hashlib

import ZODB.blob
from ZODB.POSException import POSKeyError

from .sides import READ_ERRORS, VerifyError, exc_text

BLOCK = 1 << 20


def blob_digest(source, oid, tid):
    """(size, sha256 hex) of the blob file of (oid, tid) on `source`; None
    when the file is missing."""
    try:
        path = source.storage.loadBlob(oid, tid)
        digest, size = hashlib.sha256(), 0
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(BLOCK), b''):
                digest.update(block)
                size += len(block)
    except (POSKeyError, FileNotFoundError):
        return None
    except READ_ERRORS as exc:
        raise VerifyError('reading a blob file of %s failed: %s' % (
            source.name, exc_text(exc)))
    return size, digest.hexdigest()


def _describe(digest):
    if digest is None:
        return 'no blob file'
    return '%d bytes, sha256 %s' % (digest[0], digest[1][:16])


class BlobComparison:
    """Compares the blob files of the blob records both sides agree on."""

    def __init__(self, primary, replica):
        self._sides = primary, replica
        self.enabled = primary.has_blobs and replica.has_blobs
        self.compared = 0
        self.unchecked = 0

    def __call__(self, oid, tid, data):
        """None if the blob files of record (oid, tid) agree (or it is no
        blob record), else what differs."""
        if data is None or not ZODB.blob.is_blob_record(data):
            return None
        if not self.enabled:
            self.unchecked += 1
            return None
        primary, replica = (blob_digest(side, oid, tid)
                            for side in self._sides)
        self.compared += 1
        if primary == replica and primary is not None:
            return None
        return 'blob files differ: primary %s, replica %s' % (
            _describe(primary), _describe(replica))
