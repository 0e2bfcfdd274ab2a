"""The primary side: reading committed transactions, the history guard, one
streamer thread per secondary, and the Twisted server that serves them.
"""
