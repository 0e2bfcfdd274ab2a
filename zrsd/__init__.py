"""zrsd: a standalone ZRS replica daemon for ZODB."""
