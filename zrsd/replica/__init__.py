"""The secondary side: the replication state machine, the Twisted client that
feeds it, and the replica storage that applies what it receives.
"""
