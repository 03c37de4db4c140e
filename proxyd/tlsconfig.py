# -*- test-case-name: tests.unit.test_tlsconfig -*-
"""
TLS toward upstreams: the trust root (the system store, plus --upstream-ca),
client options that send SNI and check the name with service_identity, and
failure reasons a person can act on ("certificate has expired", "unknown
issuer", "name mismatch") for proxyd's 502 bodies.

Only public Twisted API: optionsForClientTLS, platformTrust,
trustRootFromCertificates.  The one addition is a per-connection verify
callback that remembers OpenSSL's verify error, because the handshake
failure itself only says "certificate verify failed".
"""

import ssl

from OpenSSL import SSL
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

# X509_V_ERR_* codes worth naming (openssl/x509_vfy.h).
_VERIFY_ERRORS = {
    2: "unknown issuer (cannot get the issuer certificate)",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "unknown issuer (unable to get local issuer certificate)",
    21: "unknown issuer (unable to verify the first certificate)",
    23: "certificate has been revoked",
    26: "certificate is not valid for TLS servers",
}


def _pemCertificates(path):
    """The certificates in a PEM bundle, as Twisted Certificates."""
    with open(path, "rb") as f:
        data = f.read()
    marker = b"-----END CERTIFICATE-----"
    certs = []
    for block in data.split(marker):
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            certs.append(tssl.Certificate.loadPEM(block[start:] + marker + b"\n"))
    return certs


def systemBundle():
    """The path of the system's CA bundle file, or None."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate:
            try:
                with open(candidate, "rb"):
                    return candidate
            except OSError:
                continue
    return None


def upstreamTrust(extraFiles=()):
    """
    The trust root for upstream certificates: the platform's store, plus
    the certificates in C{extraFiles} (--upstream-ca).

    @raise ValueError: an extra file is unreadable or holds no certificate.
    """
    if not extraFiles:
        return tssl.platformTrust()
    certs = []
    for path in extraFiles:
        try:
            found = _pemCertificates(path)
        except (OSError, Exception) as e:
            raise ValueError("{}: {}".format(path, getattr(e, "strerror", None) or e))
        if not found:
            raise ValueError("{}: no PEM certificate in it".format(path))
        certs.extend(found)
    bundle = systemBundle()
    if bundle is not None:
        certs.extend(_pemCertificates(bundle))
    return tssl.trustRootFromCertificates(certs)


@implementer(IOpenSSLClientConnectionCreator)
class VerifyingCreator:
    """
    optionsForClientTLS (SNI, the trust root), with a verify callback of
    proxyd's own that checks the chain and the name and remembers why a
    check failed, for the 502 body.

    The callback replaces the one optionsForClientTLS installs, so it
    does that callback's job too: at depth 0 the leaf is checked against
    the host name (or IP address) with service_identity's public API.
    """

    _log = Logger()

    def __init__(self, hostname, trustRoot, acceptableProtocols=(b"http/1.1",)):
        self.hostname = hostname
        self._isIP = _isIP(hostname)
        self._options = tssl.optionsForClientTLS(
            hostname, trustRoot=trustRoot, acceptableProtocols=list(acceptableProtocols) or None
        )

    def clientConnectionForTLS(self, tlsProtocol):
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        hostname, isIP, log = self.hostname, self._isIP, self._log

        def verify(conn, cert, errno, depth, ok):
            try:
                if not ok:
                    if not hasattr(tlsProtocol, "proxydVerifyError"):
                        tlsProtocol.proxydVerifyError = (errno, depth)
                    return False
                if depth != 0:
                    return True
                try:
                    leaf = cert.to_cryptography()
                    if isIP:
                        verify_certificate_ip_address(leaf, hostname)
                    else:
                        verify_certificate_hostname(leaf, hostname)
                except VerificationError:
                    tlsProtocol.failVerification(Failure())
                    return False
                return True
            except BaseException:
                # An exception inside an OpenSSL callback would be lost.
                log.failure("While verifying the certificate of {host}", host=hostname)
                return False

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection


def upstreamCreator(hostname, trustRoot=None, insecure=False):
    """
    The client TLS connection creator for an upstream named C{hostname}:
    the certificate chain and name are always verified, unless the
    operator gave --upstream-insecure (C{insecure}).  This is the only
    place an unverified creator is made.
    """
    if insecure:
        return _UnverifiedCreator(hostname)
    return VerifyingCreator(hostname, trustRoot)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedCreator:
    """--upstream-insecure only (see L{upstreamCreator}): SNI is still sent, nothing is verified."""

    _log = Logger()

    def __init__(self, hostname, acceptableProtocols=(b"http/1.1",)):
        self.hostname = hostname
        self._context = tssl.CertificateOptions(
            verify=False, acceptableProtocols=list(acceptableProtocols) or None
        ).getContext()

    def clientConnectionForTLS(self, tlsProtocol):
        connection = SSL.Connection(self._context, None)
        if not _isIP(self.hostname):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_connect_state()
        self._log.warn("Not verifying the certificate of upstream {host} (--upstream-insecure)", host=self.hostname)
        return connection


def _isIP(host):
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def describeTLSFailure(failure, tlsProtocol, hostname):
    """
    One line saying why the TLS connection to an upstream failed, or None
    if C{failure} is not a TLS failure.
    """
    recorded = getattr(tlsProtocol, "proxydVerifyError", None)
    if recorded is not None:
        errno, depth = recorded
        what = _VERIFY_ERRORS.get(errno, "certificate verify failed (error {})".format(errno))
        return "upstream certificate for {!r} rejected: {}".format(hostname, what)
    value = failure.value
    if isinstance(value, VerificationError):
        return "upstream certificate does not match {!r} (name mismatch)".format(hostname)
    if isinstance(value, SSL.Error):
        reasons = []
        for args in value.args[0] if value.args and isinstance(value.args[0], list) else []:
            if isinstance(args, tuple) and args and args[-1]:
                reasons.append(str(args[-1]))
        return "TLS handshake with upstream {!r} failed: {}".format(hostname, ", ".join(reasons) or "protocol error")
    return None


def sslReason(error):
    """The reason strings of an OpenSSL error, in one line."""
    parts = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return ", ".join(parts) or str(error) or type(error).__name__
