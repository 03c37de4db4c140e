"""
Tests for L{proxyd.ca}: the CA on disk (fields, modes, refusals), and the
leaves it signs (fields, shared key, LRU, one generation per host).
"""

import datetime
import ipaddress
import os
import socket
import stat
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from proxyd.ca import (
    CA_VALIDITY,
    LEAF_VALIDITY,
    RENEW_BEFORE,
    CAError,
    CertificateAuthority,
    LeafFactory,
    defaultDirectory,
    loadCertificate,
    normalizeName,
)

try:
    from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store
except ImportError:  # cryptography < 43
    PolicyBuilder = None

DAY = 86400.0
_PEM = serialization.Encoding.PEM


def _utc(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _ext(certificate, kind):
    return certificate.extensions.get_extension_for_class(kind)


def writePair(testCase, certificate, key, keyMode=0o600):
    """Write a certificate and key as PEM files; return their paths."""
    directory = testCase.mktemp()
    os.mkdir(directory)
    certPath = os.path.join(directory, "my.pem")
    keyPath = os.path.join(directory, "my.key")
    with open(certPath, "wb") as f:
        f.write(certificate.public_bytes(_PEM))
    with open(keyPath, "wb") as f:
        f.write(
            key.private_bytes(
                _PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.chmod(keyPath, keyMode)
    return certPath, keyPath


def selfSigned(key, ca=True, keyUsage=True, days=365):
    """A self-signed certificate; C{ca}/C{keyUsage} control the CA extensions."""
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    if keyUsage:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    return builder.sign(key, hashes.SHA256())


class CreateTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.join(self.mktemp(), "home", "proxyd")

    def test_fields(self):
        """
        A new CA is a P-256 CA certificate: CA:true and keyCertSign+cRLSign,
        both critical, an SKI, proxyd and this host in its name, ten years
        of validity starting a little in the past, self-signed.
        """
        now = time.time()
        ca = CertificateAuthority.inDirectory(self.directory)
        cert = ca.certificate
        self.assertTrue(ca.created)
        constraints = _ext(cert, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        usage = _ext(cert, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign)
        self.assertTrue(usage.value.crl_sign)
        self.assertFalse(usage.value.digital_signature)
        self.assertEqual(
            _ext(cert, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(cert.public_key()),
        )
        [cn] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertIn("proxyd", cn.value)
        self.assertIn(socket.gethostname()[:40], cn.value)
        self.assertEqual(cert.issuer, cert.subject)
        cert.verify_directly_issued_by(cert)
        self.assertIsInstance(ca.key, ec.EllipticCurvePrivateKey)
        self.assertEqual(ca.key.curve.name, "secp256r1")
        self.assertLess(cert.not_valid_before_utc, _utc(now - DAY))
        self.assertGreater(cert.not_valid_before_utc, _utc(now - 3 * DAY))
        self.assertEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, CA_VALIDITY)
        self.assertGreater(CA_VALIDITY.days, 3650)
        self.assertEqual(cert.serial_number.bit_length(), 128)

    def test_modes(self):
        """
        The key is 0600 and the directory made for it 0700, whatever the
        umask; the certificate, being public, is 0644.
        """
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        ca = CertificateAuthority.inDirectory(self.directory)
        self.assertEqual(stat.S_IMODE(os.stat(ca.keyPath).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(ca.certPath).st_mode), 0o644)
        self.assertEqual(sorted(os.listdir(self.directory)), ["ca.key", "ca.pem"])

    def test_keyNeverOpenToOthers(self):
        """
        Every file is created with O_CREAT|O_EXCL and mode 0600 under umask
        077, so the key is never readable by others, even for an instant.
        """
        opened = []
        realOpen = os.open

        def recordingOpen(path, flags, mode=0o777, *a, **kw):
            umask = os.umask(0o022)
            os.umask(umask)
            opened.append((path, flags, mode, umask))
            return realOpen(path, flags, mode, *a, **kw)

        self.patch(os, "open", recordingOpen)
        CertificateAuthority.inDirectory(self.directory)
        created = [o for o in opened if o[1] & os.O_CREAT]
        self.assertEqual(len(created), 2)
        for path, flags, mode, umask in created:
            self.assertTrue(flags & os.O_EXCL, path)
            self.assertEqual(mode, 0o600, path)
            self.assertEqual(umask, 0o077, path)

    def test_reused(self):
        """A second load finds the same CA and does not make a new one."""
        first = CertificateAuthority.inDirectory(self.directory)
        second = CertificateAuthority.inDirectory(self.directory)
        self.assertFalse(second.created)
        self.assertEqual(first.fingerprint, second.fingerprint)
        self.assertEqual(len(second.fingerprint), 32 * 3 - 1)
        digest = second.certificate.fingerprint(hashes.SHA256())
        self.assertEqual(second.fingerprint, digest.hex(":").upper())

    def test_noCreate(self):
        """create=False refuses an empty directory instead of making a CA."""
        error = self.assertRaises(
            CAError, CertificateAuthority.inDirectory, self.directory, create=False
        )
        self.assertIn("proxyd ca init", str(error))
        self.assertFalse(os.path.exists(self.directory))

    def test_unwritable(self):
        """A directory that cannot be made is one CAError line."""
        parent = self.mktemp()
        with open(parent, "w"):
            pass
        error = self.assertRaises(
            CAError, CertificateAuthority.inDirectory, os.path.join(parent, "ca")
        )
        self.assertIn("cannot create the CA", str(error))

    def test_defaultDirectory(self):
        """$PROXYD_HOME wins; without it, ~/.proxyd."""
        self.assertEqual(defaultDirectory({"PROXYD_HOME": "/srv/p"}), "/srv/p")
        self.assertEqual(
            defaultDirectory({}), os.path.join(os.path.expanduser("~"), ".proxyd")
        )


class RefusalTests(SynchronousTestCase):
    """Each unusable CA is refused with one line naming the file and why."""

    def setUp(self):
        self.directory = self.mktemp()
        self.ca = CertificateAuthority.inDirectory(self.directory)

    def refused(self, *args, **kwargs):
        loader = kwargs.pop("loader", CertificateAuthority.inDirectory)
        error = self.assertRaises(CAError, loader, *(args or (self.directory,)), **kwargs)
        self.assertNotIn("\n", str(error))
        return str(error)

    def refusedFiles(self, certPath, keyPath):
        return self.refused(certPath, keyPath, loader=CertificateAuthority.fromFiles)

    def test_keyReadableByOthers(self):
        """A key readable by others (0644) is refused with the fix in the message."""
        os.chmod(self.ca.keyPath, 0o644)
        self.assertEqual(
            self.refused(), self.ca.keyPath + " is readable by others (mode 0644); chmod 600 it"
        )

    def test_keyReadableByGroup(self):
        """A key readable by its group (0640) is refused."""
        os.chmod(self.ca.keyPath, 0o640)
        self.assertIn("is readable by its group (mode 0640)", self.refused())

    def test_keyWritableByGroup(self):
        """A key writable by its group (0620) is refused."""
        os.chmod(self.ca.keyPath, 0o620)
        self.assertIn("is writable by its group (mode 0620)", self.refused())

    def test_mismatch(self):
        """A certificate with another CA's key is refused, naming the key."""
        other = CertificateAuthority.inDirectory(self.mktemp())
        message = self.refusedFiles(self.ca.certPath, other.keyPath)
        self.assertIn(other.keyPath, message)
        self.assertIn("do not match", message)

    def test_notCA(self):
        """A certificate without basicConstraints CA:true is refused."""
        key = ec.generate_private_key(ec.SECP256R1())
        certPath, keyPath = writePair(self, selfSigned(key, ca=False), key)
        message = self.refusedFiles(certPath, keyPath)
        self.assertEqual(message, certPath + ": not a CA certificate (no basicConstraints CA:true)")

    def test_noKeyCertSign(self):
        """CA:true without keyUsage is refused too: strict verifiers reject its leaves."""
        key = ec.generate_private_key(ec.SECP256R1())
        certPath, keyPath = writePair(self, selfSigned(key, keyUsage=False), key)
        message = self.refusedFiles(certPath, keyPath)
        self.assertIn("keyCertSign", message)

    def test_missingFile(self):
        """A missing file is named: in a CA directory and as --ca-cert/--ca-key."""
        os.unlink(self.ca.keyPath)
        message = self.refused()
        self.assertTrue(message.startswith(self.ca.keyPath + ": no such file"), message)
        os.unlink(self.ca.certPath)
        message = self.refusedFiles(self.ca.certPath, self.ca.keyPath)
        self.assertEqual(message, self.ca.certPath + ": no such file")

    def test_missingCertificateOnly(self):
        """A key without its certificate is refused, never replaced by a new CA."""
        os.unlink(self.ca.certPath)
        self.assertIn("remove both", self.refused())

    def test_garbageCertificate(self):
        """A ca.pem that is not PEM is refused."""
        with open(self.ca.certPath, "wb") as f:
            f.write(b"not a certificate\n")
        self.assertEqual(self.refused(), self.ca.certPath + ": not a PEM certificate")

    def test_garbageKey(self):
        """A ca.key that does not parse is refused."""
        with open(self.ca.keyPath, "wb") as f:
            f.write(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
        self.assertEqual(self.refused(), self.ca.keyPath + ": not a PEM private key")

    def test_passphrase(self):
        """An encrypted key is refused: the daemon cannot ask for a passphrase."""
        with open(self.ca.keyPath, "wb") as f:
            f.write(
                self.ca.key.private_bytes(
                    _PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                )
            )
        self.assertIn("passphrase", self.refused())

    def test_unsupportedKey(self):
        """An Ed25519 CA is refused: browsers do not take Ed25519 chains."""
        key = ed25519.Ed25519PrivateKey.generate()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(_utc(time.time() - DAY))
            .not_valid_after(_utc(time.time() + DAY))
            .sign(key, None)
        )
        certPath, keyPath = writePair(self, cert, key)
        self.assertIn("RSA or ECDSA", self.refusedFiles(certPath, keyPath))

    def test_expired(self):
        """An expired CA is refused with its end date."""
        directory = self.mktemp()
        CertificateAuthority.create(directory, now=time.time() - 11 * 365 * DAY)
        message = self.refused(directory)
        self.assertIn(": expired on ", message)
        self.assertIn("ca.pem", message)

    def test_notYetValid(self):
        """A CA whose notBefore is in the future is refused (a clock problem)."""
        message = self.refused(self.directory, now=time.time() - 10 * DAY)
        self.assertIn("not valid before", message)

    def test_loadCertificate(self):
        """The key-less loader still insists on a CA."""
        self.assertEqual(loadCertificate(self.ca.certPath), self.ca.certificate)
        key = ec.generate_private_key(ec.SECP256R1())
        certPath, _ = writePair(self, selfSigned(key, ca=False), key)
        self.assertIn("not a CA", self.refused(certPath, loader=loadCertificate))

    def test_explicitRSA(self):
        """A user's RSA CA given as two files loads, and is not copied anywhere."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certPath, keyPath = writePair(self, selfSigned(key), key)
        ca = CertificateAuthority.fromFiles(certPath, keyPath)
        self.assertFalse(ca.created)
        self.assertEqual(ca.certPath, certPath)
        self.assertEqual(sorted(os.listdir(os.path.dirname(certPath))), ["my.key", "my.pem"])


class _LeafBase(SynchronousTestCase):
    def setUp(self):
        self.ca = CertificateAuthority.inDirectory(self.mktemp())
        self.clock = Clock()
        self.clock.advance(time.time())

    def factory(self, **kwargs):
        return LeafFactory(self.ca, clock=self.clock, **kwargs)

    def leaf(self, name, factory=None):
        return self.successResultOf((factory or self.factory()).leafFor(name))

    def verify(self, leaf, subject):
        if PolicyBuilder is None:
            store = crypto.X509Store()
            store.add_cert(self.ca.x509)
            crypto.X509StoreContext(store, leaf.x509).verify_certificate()
            return
        verifier = (
            PolicyBuilder()
            .store(Store([self.ca.certificate]))
            .time(_utc(self.clock.seconds()))
            .build_server_verifier(subject)
        )
        chain = verifier.verify(leaf.certificate, [])
        self.assertEqual(chain[-1], self.ca.certificate)


class LeafFieldTests(_LeafBase):
    def assertCommon(self, leaf, critical=False):
        cert = leaf.certificate
        now = self.clock.seconds()
        self.assertEqual(cert.issuer, self.ca.certificate.subject)
        cert.verify_directly_issued_by(self.ca.certificate)
        self.assertEqual(
            _ext(cert, x509.ExtendedKeyUsage).value,
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
        )
        constraints = _ext(cert, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertFalse(constraints.value.ca)
        usage = _ext(cert, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)
        self.assertFalse(usage.value.key_cert_sign)
        self.assertEqual(
            _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier,
            _ext(self.ca.certificate, x509.SubjectKeyIdentifier).value.digest,
        )
        self.assertEqual(
            _ext(cert, x509.SubjectKeyIdentifier).value,
            x509.SubjectKeyIdentifier.from_public_key(cert.public_key()),
        )
        self.assertEqual(_ext(cert, x509.SubjectAlternativeName).critical, critical)
        self.assertLessEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, LEAF_VALIDITY)
        self.assertLess(cert.not_valid_before_utc, _utc(now - DAY))
        self.assertGreater(cert.not_valid_after_utc, _utc(now + 390 * DAY))
        self.assertGreaterEqual(cert.not_valid_before_utc, self.ca.notBefore)
        self.assertLessEqual(cert.not_valid_after_utc, self.ca.notAfter)
        self.assertEqual(cert.serial_number.bit_length(), 128)
        self.assertEqual(leaf.notAfter, cert.not_valid_after_utc.timestamp())

    def test_dnsName(self):
        """A DNS name gets a DNS SAN, and the CN since it is short."""
        leaf = self.leaf("www.Example.COM.")
        self.assertCommon(leaf)
        san = _ext(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.DNSName("www.example.com")])
        [cn] = leaf.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(cn.value, "www.example.com")
        self.verify(leaf, DNSName("www.example.com"))

    def test_ipv4(self):
        """An IPv4 target gets an iPAddress SAN and no DNS SAN."""
        leaf = self.leaf("192.0.2.7")
        self.assertCommon(leaf)
        san = _ext(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.IPAddress(ipaddress.ip_address("192.0.2.7"))])
        self.assertEqual(san.get_values_for_type(x509.DNSName), [])
        if PolicyBuilder is not None:
            self.verify(leaf, IPAddress(ipaddress.ip_address("192.0.2.7")))

    def test_ipv6(self):
        """An IPv6 target, bracketed or not, gets an iPAddress SAN."""
        leaf = self.leaf("[2001:DB8::1]")
        self.assertCommon(leaf)
        san = _ext(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.IPAddress(ipaddress.ip_address("2001:db8::1"))])
        if PolicyBuilder is not None:
            self.verify(leaf, IPAddress(ipaddress.ip_address("2001:db8::1")))

    def test_longName(self):
        """
        A name of 64 characters or more does not fit a CN: the subject is
        empty and the SAN critical (RFC 5280 4.2.1.6), which strict
        verifiers accept.
        """
        name = ("a" * 60) + ".example.com"
        leaf = self.leaf(name)
        self.assertCommon(leaf, critical=True)
        self.assertEqual(list(leaf.certificate.subject), [])
        self.verify(leaf, DNSName(name))

    def test_idn(self):
        """A Unicode name is signed as its A-label."""
        leaf = self.leaf("b\u00fccher.example")
        san = _ext(leaf.certificate, x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.DNSName("xn--bcher-kva.example")])

    def test_rsa(self):
        """--leaf-key rsa: an RSA-2048 leaf key, with keyEncipherment."""
        leaf = self.leaf("rsa.example", self.factory(keyType="rsa"))
        self.assertIsInstance(leaf.key, rsa.RSAPrivateKey)
        self.assertEqual(leaf.key.key_size, 2048)
        self.assertTrue(_ext(leaf.certificate, x509.KeyUsage).value.key_encipherment)
        self.assertCommon(leaf)
        self.verify(leaf, DNSName("rsa.example"))

    def test_ecdsaNoKeyEncipherment(self):
        """An ECDSA leaf key has digitalSignature only, on P-256."""
        leaf = self.leaf("ec.example")
        self.assertFalse(_ext(leaf.certificate, x509.KeyUsage).value.key_encipherment)
        self.assertEqual(leaf.key.curve.name, "secp256r1")

    def test_sharedKey(self):
        """All leaves carry one key, the same in every factory, never the CA's."""
        spki = serialization.PublicFormat.SubjectPublicKeyInfo

        def public(cert):
            return cert.public_key().public_bytes(serialization.Encoding.DER, spki)

        one = self.leaf("one.example")
        two = self.leaf("two.example", self.factory())
        self.assertEqual(public(one.certificate), public(two.certificate))
        self.assertIs(one.pkey, two.pkey)
        self.assertNotEqual(public(one.certificate), public(self.ca.certificate))

    def test_tlsObjects(self):
        """The pyOpenSSL twins and the PEMs are the same certificate and key."""
        leaf = self.leaf("tls.example")
        self.assertIsInstance(leaf.x509, crypto.X509)
        self.assertEqual(leaf.x509.to_cryptography(), leaf.certificate)
        self.assertIsInstance(leaf.pkey, crypto.PKey)
        self.assertEqual(
            leaf.pkey.to_cryptography_key().private_numbers(), leaf.key.private_numbers()
        )
        self.assertEqual(x509.load_pem_x509_certificate(leaf.certPEM), leaf.certificate)
        key = serialization.load_pem_private_key(leaf.keyPEM, None)
        self.assertEqual(key.private_numbers(), leaf.key.private_numbers())

    def test_insideCA(self):
        """A CA that ends sooner than 397 days ends its leaves too."""
        self.ca = CertificateAuthority.inDirectory(
            self.mktemp(), now=time.time() - CA_VALIDITY.total_seconds() + 30 * DAY
        )
        leaf = self.leaf("short.example")
        self.assertEqual(leaf.certificate.not_valid_after_utc, self.ca.notAfter)
        self.verify(leaf, DNSName("short.example"))

    def test_caExpired(self):
        """Once the CA has expired, asking for a leaf fails with a CAError."""
        self.clock.advance(CA_VALIDITY.total_seconds())
        self.failureResultOf(self.factory().leafFor("late.example"), CAError)

    def test_badName(self):
        """Names that are not hosts fail the Deferred with ValueError."""
        for name in ("", "a b.example", "*.example.com", "x" * 64 + ".example", b"\xff"):
            self.failureResultOf(self.factory().leafFor(name), ValueError)

    def test_normalizeName(self):
        """Case, a final dot, brackets and an IPv6 zone do not make new names."""
        self.assertEqual(normalizeName(b"WWW.example.com."), "www.example.com")
        self.assertEqual(normalizeName("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))
        self.assertEqual(normalizeName("[::1]"), ipaddress.ip_address("::1"))

    def test_rsaCA(self):
        """
        An RSA CA signs in the reactor's thread pool (RSA signatures take a
        millisecond or more); its leaves verify.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certPath, keyPath = writePair(self, selfSigned(key, days=3000), key)
        self.ca = CertificateAuthority.fromFiles(certPath, keyPath)
        calls = []

        class Pool:
            def callInThreadWithCallback(self, onResult, f, *args):
                calls.append(f)
                onResult(True, f(*args))

        class Reactor(Clock):
            def getThreadPool(self):
                return Pool()

            def callFromThread(self, f, *args):
                f(*args)

        self.clock = Reactor()
        self.clock.advance(time.time())
        leaf = self.leaf("rsa-ca.example")
        self.assertEqual(len(calls), 1)
        self.verify(leaf, DNSName("rsa-ca.example"))


class HandshakeTests(_LeafBase):
    """
    A real TLS handshake (OpenSSL both ends, over iosim) with a client that
    trusts only the CA and checks the name with service_identity.
    """

    def handshake(self, leaf, name):
        """
        @return: C{None} if the client completed the handshake and kept the
            connection, else the reason its connection was lost.
        """
        done, lost = [], []

        @implementer(IHandshakeListener)
        class Client(Protocol):
            def handshakeCompleted(self):
                done.append(True)

            def connectionLost(self, reason):
                lost.append(reason)

        server = TLSMemoryBIOFactory(
            CertificateOptions(privateKey=leaf.key, certificate=leaf.certificate),
            False,
            Factory.forProtocol(Protocol),
        )
        client = TLSMemoryBIOFactory(
            optionsForClientTLS(name, trustRoot=Certificate.loadPEM(self.ca.certPEM)),
            True,
            Factory.forProtocol(Client),
        )
        _, _, pump = connectedServerAndClient(
            lambda: server.buildProtocol(None), lambda: client.buildProtocol(None), greet=False
        )
        pump.flush()
        if lost:
            return lost[0]
        self.assertEqual(done, [True])
        return None

    def test_dnsName(self):
        """A client checking a DNS name accepts its leaf."""
        self.assertIsNone(self.handshake(self.leaf("tls.example"), "tls.example"))

    def test_longName(self):
        """A name too long for a CN (empty subject, critical SAN) is accepted."""
        name = "b" * 60 + ".example.com"
        self.assertIsNone(self.handshake(self.leaf(name), name))

    def test_ipAddress(self):
        """IPv4 and IPv6 targets are checked against the iPAddress SAN."""
        for ip in ("127.0.0.1", "::1"):
            self.assertIsNone(self.handshake(self.leaf(ip), ip))

    def test_rsaLeaf(self):
        """A leaf with the shared RSA key is accepted."""
        leaf = self.leaf("rsa.example", self.factory(keyType="rsa"))
        self.assertIsNone(self.handshake(leaf, "rsa.example"))

    def test_wrongName(self):
        """The leaf for one host does not pass for another."""
        reason = self.handshake(self.leaf("one.example"), "two.example")
        self.assertIsInstance(reason.value, VerificationError)

    def test_otherCA(self):
        """A client that trusts another CA refuses the leaf."""
        leaf = self.leaf("tls.example")
        self.ca = CertificateAuthority.inDirectory(self.mktemp())
        reason = self.handshake(leaf, "tls.example")
        self.assertIsInstance(reason.value, SSL.Error)


class CacheTests(_LeafBase):
    def test_sameLeaf(self):
        """The same host, however spelled, gets the same leaf while cached."""
        factory = self.factory()
        first = self.leaf("Same.Example", factory)
        second = self.leaf("same.example.", factory)
        self.assertIs(first, second)
        self.assertEqual((factory.generated, factory.hits, factory.misses), (1, 1, 1))
        self.assertIs(self.leaf("[::1]", factory), self.leaf("::1", factory))

    def test_lru(self):
        """The least recently used leaf goes first; a hit refreshes."""
        factory = self.factory(cacheSize=2)
        a = self.leaf("a.example", factory)
        b = self.leaf("b.example", factory)
        self.assertIs(self.leaf("a.example", factory), a)  # a is now the newest
        self.leaf("c.example", factory)  # evicts b
        self.assertEqual(factory.cached, 2)
        self.assertIs(self.leaf("a.example", factory), a)
        self.assertNotEqual(self.leaf("b.example", factory).serial, b.serial)
        self.assertEqual(factory.generated, 4)
        self.assertEqual(factory.hits, 2)

    def test_renewed(self):
        """A cached leaf close to its notAfter is replaced by a new one."""
        factory = self.factory()
        old = self.leaf("renew.example", factory)
        self.clock.advance(old.notAfter - self.clock.seconds() - RENEW_BEFORE.total_seconds() - 1)
        self.assertIs(self.leaf("renew.example", factory), old)
        self.clock.advance(2)
        new = self.leaf("renew.example", factory)
        self.assertNotEqual(new.serial, old.serial)
        self.assertGreater(new.notAfter, old.notAfter)


class InFlightTests(_LeafBase):
    """Concurrent first asks for one host share a single generation."""

    def setUp(self):
        _LeafBase.setUp(self)
        self.jobs = []

        def runner(f, *args):
            d = Deferred()
            self.jobs.append((d, f, args))
            return d

        self.factory = LeafFactory(self.ca, clock=self.clock, runner=runner)

    def finish(self, index=0):
        d, f, args = self.jobs.pop(index)
        d.callback(f(*args))

    def test_oneGeneration(self):
        """Three concurrent asks for one host, however spelled, make one leaf."""
        asks = [self.factory.leafFor(name) for name in ("x.example", "X.example", "x.example.")]
        other = self.factory.leafFor("y.example")
        self.assertEqual(len(self.jobs), 2)
        for d in asks:
            self.assertNoResult(d)
        self.finish()
        leaves = [self.successResultOf(d) for d in asks]
        self.assertIs(leaves[0], leaves[1])
        self.assertIs(leaves[0], leaves[2])
        self.assertNoResult(other)
        self.assertEqual((self.factory.generated, self.factory.misses), (1, 4))
        self.assertIs(self.successResultOf(self.factory.leafFor("x.example")), leaves[0])
        self.assertEqual(len(self.jobs), 1)

    def test_cancelOne(self):
        """A cancelled ask leaves the others, and the cache, served."""
        first = self.factory.leafFor("c.example")
        second = self.factory.leafFor("c.example")
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.finish()
        leaf = self.successResultOf(second)
        self.assertIs(self.successResultOf(self.factory.leafFor("c.example")), leaf)

    def test_failure(self):
        """A failed generation fails every waiter and caches nothing."""
        asks = [self.factory.leafFor("f.example") for _ in range(2)]
        d, f, args = self.jobs.pop()
        d.errback(CAError("boom"))
        for ask in asks:
            self.failureResultOf(ask, CAError)
        self.flushLoggedErrors()
        self.factory.leafFor("f.example")
        self.assertEqual(len(self.jobs), 1)
        self.assertEqual(self.factory.generated, 0)
