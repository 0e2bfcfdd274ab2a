"""Blocking client sockets to a primary, for what runs outside the reactor
(`zrsd-rewind`'s probes, a replica's file copy before it opens): TCP or a
unix socket, with TLS from the `<ssl>` section when there is one."""
import os
import socket
import ssl

from zrsd.network.tls import PEM_SUFFIXES


def client_tls_context(settings):
    """An `ssl.SSLContext` for a secondary from an `<ssl>` section: our
    certificate and key, the primary verified against `authenticate` (a
    PEM file or a directory of them) and, with check-hostname, its name.
    OSError or ssl.SSLError when the files cannot be loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = bool(settings.check_hostname)
    context.verify_mode = ssl.CERT_REQUIRED
    authorities = settings.authenticate
    if authorities and os.path.isdir(authorities):
        for name in sorted(os.listdir(authorities)):
            if name.endswith(PEM_SUFFIXES):
                context.load_verify_locations(
                    os.path.join(authorities, name))
    elif authorities:
        context.load_verify_locations(authorities)
    context.load_cert_chain(settings.certificate, settings.key,
                            settings.password())
    return context


def connect(address, timeout, settings=None, context=None):
    """A socket connected to `address` ((host, port) or a unix socket
    path) with `timeout` set, TLS-wrapped with `context` (made from the
    `<ssl>` `settings`) when given.  OSError or ssl.SSLError."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.create_connection(address, timeout)
    if context is None:
        return sock
    try:
        return context.wrap_socket(
            sock, server_hostname=settings.server_hostname or address[0])
    except BaseException:
        sock.close()
        raise
