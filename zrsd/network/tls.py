"""TLS for replication links (mutual authentication), with Twisted.

An `<ssl>` section in `<zrs>` gives this node's certificate and key and the
certificate authorities it trusts (`authenticate`: a PEM file, or a
directory of PEM files).  As a primary, the node accepts only secondaries
presenting a certificate signed by one of them; as a secondary, it verifies
the primary's certificate against them (and, with `check-hostname`, the
primary's name or IP address) and presents its own certificate.
"""
import os

from twisted.internet import endpoints, ssl

PEM_SUFFIXES = ('.pem', '.crt', '.cer')


class TLSConfigError(ValueError):
    """Certificates or keys cannot be loaded."""


def peer_name(transport):
    """The common name of a TLS peer's certificate, or None."""
    try:
        certificate = transport.getPeerCertificate()
    except Exception:  # not TLS, or no handshake yet
        return None
    if certificate is None:
        return None
    return certificate.get_subject().commonName


def _read(path, what):
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as exc:
        raise TLSConfigError('cannot read %s %s: %s' % (what, path,
                                                        exc.strerror))


def _split_pem(data):
    """The PEM certificates in `data`, one bytes object each."""
    end = b'-----END CERTIFICATE-----'
    blocks = []
    for part in data.split(end)[:-1]:
        start = part.find(b'-----BEGIN CERTIFICATE-----')
        if start >= 0:
            blocks.append(part[start:] + end + b'\n')
    return blocks


def load_authorities(path):
    """The CA certificates in a PEM file, or in the PEM files of a
    directory."""
    if os.path.isdir(path):
        files = [os.path.join(path, name) for name in sorted(os.listdir(path))
                 if name.endswith(PEM_SUFFIXES)]
    else:
        files = [path]
    authorities = []
    for name in files:
        for block in _split_pem(_read(name, 'certificate authority')):
            authorities.append(ssl.Certificate.loadPEM(block))
    if not authorities:
        raise TLSConfigError('no CA certificate found in %s' % path)
    return authorities


def load_identity(certificate, key=None, password=None):
    """This node's certificate and private key."""
    cert_pem = _read(certificate, 'certificate')
    key_pem = _read(key, 'key') if key else cert_pem
    try:
        if password is not None:
            from OpenSSL import crypto
            private_key = crypto.load_privatekey(
                crypto.FILETYPE_PEM, key_pem, password)
            return ssl.PrivateCertificate.fromCertificateAndKeyPair(
                ssl.Certificate.loadPEM(cert_pem), ssl.KeyPair(private_key))
        return ssl.PrivateCertificate.loadPEM(cert_pem + b'\n' + key_pem)
    except Exception as exc:
        raise TLSConfigError('cannot load certificate %s / key %s: %s' % (
            certificate, key or certificate, exc))


class ReplicationTLS:
    """TLS settings of one `<zrs>` section, ready for Twisted."""

    def __init__(self, certificate, key=None, authenticate=None,
                 password=None, check_hostname=True, server_hostname=None):
        if not authenticate:
            raise TLSConfigError(
                'authenticate (the CA file or directory) is required for '
                'replication TLS: both sides authenticate each other')
        self.identity = load_identity(certificate, key, password)
        self.authorities = load_authorities(authenticate)
        self.check_hostname = check_hostname
        self.server_hostname = server_hostname

    def server_options(self):
        """Context factory for a primary: client certificates required."""
        return self.identity.options(*self.authorities)

    def client_endpoint(self, reactor, host, port, timeout=30):
        """A TLS client endpoint to a primary at (host, port)."""
        if self.check_hostname:
            creator = ssl.optionsForClientTLS(
                self.server_hostname or host,
                trustRoot=ssl.trustRootFromCertificates(self.authorities),
                clientCertificate=self.identity)
            return endpoints.wrapClientTLS(creator, endpoints.HostnameEndpoint(
                reactor, host, port, timeout=timeout))
        options = ssl.CertificateOptions(
            privateKey=self.identity.privateKey.original,
            certificate=self.identity.original,
            verify=True,
            caCerts=[authority.original for authority in self.authorities])
        return endpoints.SSL4ClientEndpoint(reactor, host, port, options,
                                            timeout=timeout)
