"""Test certificate authorities and certificates, made at run time with the
`cryptography` package (never committed)."""
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _certificate(name, issuer, key, signer, extensions, ca=False):
    """A certificate of `key` for `name`, signed by `signer` as `issuer`,
    valid from yesterday for 30 days."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                       critical=True))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate):
    return certificate.public_bytes(serialization.Encoding.PEM)


class Authority:
    """A certificate authority that signs server and client certificates."""

    def __init__(self, directory, name):
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _certificate(name, name, self.key, self.key, [
            (x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), True),
            (x509.SubjectKeyIdentifier.from_public_key(
                self.key.public_key()), False)], ca=True)
        self.path = directory / ('%s-ca.pem' % name)
        self.path.write_bytes(_pem(self.certificate))

    def issue(self, name, hostname=None, address='127.0.0.1'):
        """Write NAME.pem and NAME.key for `hostname` (the certificate's
        name; None: `name` for localhost) and `address`, valid for both
        ends (a cascade node is server and client); returns their paths
        (str)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(hostname or name, self.name, key, self.key, [
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                    ExtendedKeyUsageOID.CLIENT_AUTH]), False),
            (x509.SubjectAlternativeName([
                x509.DNSName(hostname or 'localhost'),
                x509.IPAddress(ipaddress.ip_address(address))]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), False)])
        cert_path = self.directory / ('%s.pem' % name)
        key_path = self.directory / ('%s.key' % name)
        cert_path.write_bytes(_pem(cert))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return str(cert_path), str(key_path)
