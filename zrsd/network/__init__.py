"""What both sides' Twisted code shares: socket tuning and addresses, mutual
TLS, reconnect backoff and quiet repeated errors.
"""
